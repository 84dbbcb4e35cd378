"""The command lines installed as minillm-* commands (pyproject.toml's [project.scripts]) that are not the
trainer's, evaluator's or SeqKD generator's own modules: data processing, tiny models and run reports."""
