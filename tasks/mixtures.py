"""The two source mixtures of the paper, mixed in proportion to their training examples, capped.

- `sharpt_source_high_to_low`: the 15 source tasks of the high-to-low-resource setting;
- `sharpt_source_category`: the 9 sources of the cross-category setting (targets copa, cb, rte, wsc, wic).
A task's rate is min(its number of training rows, cap) (seqio's `mixing_rate_num_examples`), where the cap
is `tasks.configure(mixture_cap=...)` (default 2**19, read when the rates are first needed). Rows are the
canonical source rows after the split protocol: RACE counts articles (about 3.5 questions each) and ReCoRD
counts queries (training has one example per answer), as seqio does for uncached tasks.
"""

import seqio

# The mixed tasks must be registered first.
from tasks import classification, glue, multiple_choice, qa, registry, super_glue  # noqa: F401

HIGH_TO_LOW = (
    "docnli",
    "yelp_polarity",
    "mnli",
    "qqp",
    "qnli",
    "record",
    "cxc",
    "squad",
    "drop",
    "sst2",
    "winogrande",
    "hellaswag",
    "multirc",
    "cosmosqa",
    "race",
)
CATEGORY = ("record", "squad", "drop", "multirc", "race", "yelp_polarity", "sst2", "qqp", "cxc")


def capped_rate(task: seqio.Task) -> float:
    """The number of training rows of `task`, at most the configured cap."""
    return seqio.mixing_rate_num_examples(task, maximum=registry.SETTINGS.mixture_cap)


def _register() -> None:
    for name, task_names in (("source_high_to_low", HIGH_TO_LOW), ("source_category", CATEGORY)):
        seqio.MixtureRegistry.add(
            registry.PREFIX + name, [registry.PREFIX + t for t in task_names], default_rate=capped_rate
        )


_register()
