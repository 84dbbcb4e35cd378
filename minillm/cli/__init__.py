"""The command lines installed as minillm-* commands (pyproject.toml's [project.scripts]) that are not the
trainer's, evaluator's or SeqKD generator's own modules: data processing, tiny models and run reports."""


def add_shard_options(parser) -> None:
    """``--dtype`` and ``--shard-size`` as the ANLI and Dolly processors take them: the token dtype, and items per
    shard (0: one shard per split). A negative size is refused by the parser, in one line with exit status 2."""

    def items_per_shard(text: str) -> int:
        value = int(text)
        if value < 0:
            raise ValueError(text)
        return value

    items_per_shard.__name__ = "non-negative integer"  # argparse names the type in its refusal
    parser.add_argument("--dtype", default="auto", help="auto (uint16 when the vocabulary fits, else int32), uint16, "
                        "int32")
    parser.add_argument("--shard-size", type=items_per_shard, default=0,
                        help="items per shard; 0 = one shard per split")
