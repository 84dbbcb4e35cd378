"""Forward + backward time of one T5 training batch with transformers' modules against minillm/models/fused.py.

    python tools/bench_fused_kernels.py [--preset flan-t5-small] [--batch-size 8] [--prompt-length 136]
                                        [--target-length 5] [--threads N] [--iterations 12] [--dtype bf16]

Three copies of one randomly initialised model (eager attention, training mode, dropout as the preset sets it):
transformers' modules; the fused GELU and RMS norm (``fuse_elementwise(model)``, what a GPU runs); and the CPU set
(``fuse_elementwise(model, cpu=True)``: the fused GELU, the CPU RMS norm, the CPU dropout and attention). The copies
take turns, one step each (tools/step_timing.py); the script
prints the median and best seconds per step of each and the speed-ups over the first.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minillm.models.fused import fuse_elementwise  # noqa: E402
from minillm.models.tiny import PRESETS, build_model  # noqa: E402
from step_timing import DTYPES, add_shape_args, interleaved_medians, parse_shape_args, random_batch  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="flan-t5-small", choices=tuple(PRESETS))
    add_shape_args(parser, iterations=12)
    args = parse_shape_args(parser, argv)

    reference = build_model(args.preset, args.vocab_size).train().to(DTYPES[args.dtype])
    reference.set_attn_implementation("eager")
    variants = {"transformers' modules": reference,
                "fused GELU + RMS norm": copy.deepcopy(reference),
                "CPU norm + dropout": copy.deepcopy(reference)}
    fuse_elementwise(variants["fused GELU + RMS norm"])
    fuse_elementwise(variants["CPU norm + dropout"], cpu=True)
    batch = random_batch(args)

    def clear_gradients() -> None:
        for model in variants.values():
            for parameter in model.parameters():
                parameter.grad = None

    timings = interleaved_medians({name: (lambda m=model: m(**batch).loss.backward())
                                   for name, model in variants.items()}, args.iterations, clear_gradients)
    print(f"{args.preset} {args.dtype}, batch {args.batch_size} x {args.prompt_length} prompt + "
          f"{args.target_length} target tokens, {args.iterations} steps each")
    baseline = timings["transformers' modules"][0]
    for name, (median, best) in timings.items():
        print(f"{name:<24} median {median:.4f} s/step, best {best:.4f}, speed-up {baseline / median:.2f}x")


if __name__ == "__main__":
    main()
