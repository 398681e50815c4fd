"""Toy dual-encoder training run on generated data, used by tests/test_train.py (exact resume after SIGKILL) and
tests/test_distributed.py (several processes).

Run: python tests/_resume_script.py --out /tmp/toy --max-steps 12 --checkpoint-every 3 --batch-size 8 --lr 0.05
     python -m hnjax.launch --num-processes 2 --devices-per-process 2 -- tests/_resume_script.py --out /tmp/toy2 \
         --parallel shard_map --max-steps 12
"""

import argparse
import logging
import os
import signal
import sys

import _train_toy as toy
import jax

from hnjax import distributed
from hnjax.train import config as config_lib
from hnjax.train import loop


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    config_lib.add_train_arguments(parser, config_lib.TrainConfig(lr=0.05, batch_size=8, warmup=0.1))
    parser.add_argument("--n-docs", type=int, default=64, help="generated documents (and queries)")
    parser.add_argument("--noise", type=float, default=0.5, help="probability that a query token is replaced")
    parser.add_argument("--negatives", type=int, default=3, help="mined hard negatives per query (0: no miner)")
    parser.add_argument("--refresh-every", type=int, default=4, help="miner refresh period in steps")
    parser.add_argument("--no-eval", action="store_true", help="skip the recall evaluation")
    parser.add_argument("--kill-at-step", type=int, default=0, help="test only: SIGKILL this process after step N")
    parser.add_argument("--kill-process", type=int, default=None, help="test only: the process --kill-at-step kills")
    parser.add_argument("--fail-at-step", type=int, default=0, help="test only: raise an error after step N")
    distributed.add_distributed_arguments(parser)
    args = parser.parse_args(argv)
    distributed.initialize_from_args(args)
    config = config_lib.config_from_args(args)
    queries, docs = toy.make_data(n_docs=args.n_docs, noise=args.noise)
    miner = None
    if args.negatives:
        miner = toy.make_miner(queries, docs, num_negatives=args.negatives, refresh_every=args.refresh_every)

    if not args.no_eval and not args.resume:
        print("initial eval:", toy.recall_at(toy.init_params(), queries, docs))

    def kill(step, record):
        if step == args.kill_at_step and args.kill_process in (None, jax.process_index()):
            os.kill(os.getpid(), signal.SIGKILL)
        if step == args.fail_at_step and args.kill_process in (None, jax.process_index()):
            raise RuntimeError(f"test failure at step {step}")

    result = loop.fit(
        config,
        params=toy.init_params(),
        loss_fn=toy.loss_fn,
        batch_fn=toy.make_batch_fn(queries, docs),
        num_examples=len(queries),
        miner=miner,
        eval_fn=None if args.no_eval else (lambda params, step: toy.recall_at(params, queries, docs)),
        callbacks=[kill] if args.kill_at_step or args.fail_at_step else [],
        extra_config={
            "n_docs": args.n_docs,
            "noise": args.noise,
            "negatives": args.negatives,
            "refresh_every": args.refresh_every,
        },
    )
    if result.history:
        losses = [r["loss"] for r in result.history]
        k = max(len(losses) // 10, 1)
        print(f"loss: first {k} steps mean {sum(losses[:k]) / k:.4f}, last {k} steps mean {sum(losses[-k:]) / k:.4f}")
    if result.evals:
        print("final eval:", result.evals[-1])
    print(result.format_time_split())
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, force=True)
    logging.getLogger("hnjax").setLevel(logging.INFO)
    main()
