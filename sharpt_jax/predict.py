"""`python -m sharpt_jax.predict --adapter A [--adapter B ...] --input rows.jsonl --output preds.jsonl`.

The command's entry point; the code is `sharpt_jax.serving.predict` (mixed-task serving of adapters), imported
once the arguments are parsed (so `--help` and argument mistakes answer at once, without starting TensorFlow or
JAX).
"""

import argparse

from sharpt_jax import storage


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--adapter", action="append", required=True, type=storage.path, help="an adapter folder (repeat)"
    )
    parser.add_argument("--input", required=True, type=storage.path, help='JSONL rows {"task": NAME, ...raw fields}')
    parser.add_argument("--output", required=True, type=storage.path, help="JSONL predictions, one line per input row")
    parser.add_argument("--batch_size", type=int, default=32, help="rows per batch (padded to the devices)")
    parser.add_argument(
        "--t5", default=None, help="the frozen T5: a folder or hub id, if not at the adapters' recorded path or hub id"
    )
    parser.add_argument("--encoder", default=None, help="the instance encoder: a folder or hub id, likewise")
    args = parser.parse_args(argv)
    from sharpt_jax.serving import predict

    predict.run(**vars(args))


if __name__ == "__main__":
    main()
