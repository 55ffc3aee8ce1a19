"""SeqIO registry of the 25 SharPT tasks and the two source mixtures (TASKS.md).

`import tasks` registers every task as `sharpt_<name>` and the mixtures `sharpt_source_high_to_low` and
`sharpt_source_category`, reading no file and making no network call. Then:

    tasks.configure(data_dir=DIR, t5_vocab="spiece.model", encoder_vocab="vocab.txt")
    ds = seqio.get_mixture_or_task("sharpt_rte").get_dataset({"inputs": 512, "targets": 8,
                                                             "instance_inputs": 128}, split="validation")
    tasks.info("rte")  # TaskInfo: source, split protocol with its seed and sizes, label names.

Modules: sources (TFDS or data files, split protocol), preprocessors (shared format helpers), one module per
family (glue, super_glue, qa, multiple_choice, classification), mixtures, features (vocabularies, feature
converter), registry (registration helper, settings, TaskInfo), samples (bundled sample data); metrics,
postprocessors and prepare (CxC and CR release files -> data folder). `skills_world` registers the synthetic
skills world (`sharpt_skills_*`, not among `names()`), where the method's learning is measured.
"""

# Importing the family modules and the mixtures registers them.
from tasks import classification, glue, mixtures, multiple_choice, qa, skills_world, super_glue  # noqa: F401
from tasks.registry import TaskInfo, configure, info, names

__all__ = ["TaskInfo", "configure", "info", "names"]
