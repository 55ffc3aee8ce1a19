"""Mixed-task serving: rows of many tasks, each answered with its own adapter, in shared batches.

    python -m sharpt_jax.predict --adapter A [--adapter B ...] --input rows.jsonl --output preds.jsonl

or from Python:

    predictor = Predictor([load_adapter("A"), load_adapter("B")])
    predictor.predict([{"task": "rte", "sentence1": "...", "sentence2": "...", "label": -1}, ...])

A row is {"task": NAME, ...} with the raw fields of that task's data files (`<data_dir>/<task>/<split>.jsonl`;
`tasks.registry.row_features(task)` lists them; an unknown answer is the data's hidden value, label -1); a
skills-world row has "inputs" and "targets" (may be ""), as its generator writes them; a file-backed task's row
the fields of its input template (its target may be left out). Where the adapters serve one task, "task" may be
left out. Other fields are ignored.
Every row becomes its model features through its task's own seqio preprocessors (format, tokenisation, EOS after
trimming to the lengths of the adapter's run) and the feature converter: the code of training and evaluation.

Batching. Rows whose adapters share a prompt length L go into the same batches in input order, whatever their
task. One jitted program per batch shape computes every adapter's prompts [B, L, d] for the whole batch with
that adapter's own module (SharPT: encoder, codebook, generator; no_latent: encoder, generator; PromptTuning:
its prompt), keeps each row's own adapter's prompt, and decodes greedily with the one frozen T5
(`decoding.greedy_decode`). The instance encoder's pass is the same computation for every adapter (same weights,
same tokens); XLA keeps one copy of it (with a second SharPT adapter the compiled program gains only the
codebook's and generator's matmuls). The generator runs A times per batch, which is small next to the T5, and a
batch decodes until its longest row ends, whichever task that row is of (bench/serve.py measures the balance).
Rows of an adapter whose run scored by rank classification, on a task with a closed label set, are scored as
the evaluator does (`scoring.label_log_likelihoods`), in batches of their task.

Output: one dict per input row, in input order: {"task", "prediction" (postprocessed by the task's
postprocessor, as the evaluator's `SplitScore.predictions`), "text" (the decoded or ranked text), "skill" (SharPT:
the chosen codebook index)}. A row that makes several examples (RACE: one per question) gets lists of them.
Predictions equal the evaluator's for the same checkpoint (tests/test_adapters.py); where adapters differ in
sequence lengths, batches are padded to the longest, which can move results by float rounding only.
"""

import functools
import json
import sys
import time
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import seqio
import tensorflow as tf
from flax import nnx

import tasks
from sharpt_jax import build, data, optim, scoring, sharding, source_stage, storage
from sharpt_jax.decoding import greedy_decode
from sharpt_jax.models import methods
from sharpt_jax.models.sharpt import SharPT
from sharpt_jax.serving.export import Adapter, AdapterError, adapter_filter, load_adapter
from tasks import files as file_tasks
from tasks import registry, row_files, sources
from tasks.features import SharPTFeatureConverter

ROW = "row_index"  # The field that carries each example's row through the task's preprocessing.
SAME_MODELS = "adapters served together share their frozen models (--{part} FOLDER gives the one they need)"


class TaskPipeline:
    """Raw rows of one task -> its examples and model features, through the task's own seqio preprocessing.

    Each row runs through the task's preprocessors (seqio's `Task.preprocess_precache` and `preprocess_postcache`,
    what `Task.get_dataset` applies; its final trim is a no-op after `append_eos_after_trim`) as a one-row dataset
    inside one `flat_map`, so that every example knows its row even where a format makes several of one row. The
    examples then go through `SharPTFeatureConverter`. Both tf.data graphs are traced once, when the pipeline is
    made; every call reads its own rows through them.
    """

    def __init__(self, task: str, trim_lengths: Mapping[str, int], pad_lengths: Mapping[str, int]):
        """task: a registered task ("rte"); trim_lengths: what the task trims to (the adapter's run's
        {"inputs", "targets", "instance_inputs"}); pad_lengths: the lengths of the batches, at least those."""
        registered = seqio.get_mixture_or_task(registry.seqio_name(task))

        def one_row(index, row):
            dataset = registered.preprocess_precache(tf.data.Dataset.from_tensors(row))
            dataset = registered.preprocess_postcache(dataset, sequence_length=dict(trim_lengths))
            return dataset.map(lambda ex: {**ex, ROW: index})

        data.keep_tensorflow_off_accelerators()
        self._rows, self._examples = [], []
        rows = sources.rows_dataset(lambda: self._rows, registry.row_features(task))
        self._preprocessed = rows.enumerate().flat_map(one_row)
        examples = tf.data.Dataset.from_generator(
            lambda: iter(self._examples), output_signature=self._preprocessed.element_spec
        )
        self._converted = SharPTFeatureConverter()(examples, dict(pad_lengths)).batch(1024)

    def __call__(self, rows: Sequence[Mapping]) -> tuple[np.ndarray, list[dict], dict[str, np.ndarray]]:
        """Returns:
        row_of: int [n], the row of each of the n examples (ascending).
        examples: the n task examples (numpy values, strings as bytes), as `data.eval_batches` yields them.
        features: {model feature: int32 [n, length]} padded to pad_lengths.
        """
        self._rows = list(rows)
        self._examples = list(self._preprocessed.as_numpy_iterator())
        batches = list(self._converted.as_numpy_iterator())
        features = {key: np.concatenate([b[key] for b in batches]) for key in batches[0]} if batches else {}
        row_of = np.array([ex.pop(ROW) for ex in self._examples], np.int64)
        examples, self._rows, self._examples = self._examples, [], []
        return row_of, examples, features


@functools.partial(jax.jit, static_argnames=("graphdefs", "uses_encoder", "max_decode_len"))
def mixed_greedy_tokens(
    graphdefs: tuple,
    uses_encoder: tuple[bool, ...],
    adapter_states: tuple,
    t5_state: nnx.State,
    encoder_state: nnx.State,
    batch: Mapping[str, jax.Array],
    adapter_index: jax.Array,
    max_decode_len: int,
) -> tuple[jax.Array, jax.Array]:
    """Greedy decoding of a batch whose rows each take the prompt of their own adapter.

    Args:
      graphdefs, adapter_states: per adapter (A of them, one prompt length L), the graph of its `SharPT` and its
        adapter parameters (`export.adapter_filter`).
      uses_encoder: per adapter, whether its method reads the instance encoder.
      t5_state, encoder_state: the shared frozen T5 and instance encoder.
      batch: the model features of B rows (`SharPTFeatureConverter`).
      adapter_index: int32 [B], each row's adapter.
      max_decode_len: decoder positions.

    Returns:
      tokens: int32 [B, max_decode_len], as `scoring.greedy_tokens`.
      skills: int32 [B], the codebook index of rows of SharPT adapters, -1 for the others.
    """
    prompts, skills = [], []
    for graphdef, encoder, state in zip(graphdefs, uses_encoder, adapter_states, strict=True):
        model = nnx.merge(graphdef, state, t5_state, *([encoder_state] if encoder else []))
        prompt, aux = model.prompts(batch)  # [B, L, d], computed as the evaluator computes it.
        prompts.append(prompt.astype(jnp.float32))
        skills.append(aux.get("skill", jnp.full(adapter_index.shape, -1, jnp.int32)))
    rows = jnp.arange(adapter_index.shape[0])
    prompt = jnp.stack(prompts)[adapter_index, rows]  # [A, B, L, d] -> [B, L, d]
    tokens = greedy_decode(
        model.t5, batch["encoder_input_tokens"], batch["encoder_input_mask"], prompt, max_decode_len=max_decode_len
    )
    return tokens, jnp.stack(skills)[adapter_index, rows]


class Predictor:
    """Answers rows of every task its adapters serve; see the module docstring."""

    def __init__(self, adapters: Sequence[Adapter], batch_size: int = 32, mesh: jax.sharding.Mesh | None = None):
        """Builds the frozen models once and places them and the adapters on `mesh` (default: all devices).

        Points every task at the adapters' vocabularies (`tasks.configure`; the data folder setting is kept).

        Raises:
          AdapterError: no adapters, adapters of different frozen models or dtypes, two adapters for one task, or
            a batch size that is not positive.
        """
        if not adapters:
            raise AdapterError("no adapters: pass at least one --adapter FOLDER")
        self.adapters, self.batch_size = list(adapters), batch_size
        self.mesh = mesh if mesh is not None else sharding.make_mesh("-1,1")
        try:
            self.rows = data.eval_rows(batch_size, self.mesh)  # Batches are padded to the mesh, as in evaluation.
        except ValueError as err:
            raise AdapterError(f"--batch_size {batch_size}: {err}") from err
        first = self.adapters[0]
        self.adapter_of: dict[str, int] = {}
        for i, adapter in enumerate(self.adapters):
            _check_same_backbone(first, adapter)
            for task, recorded in adapter.config.get("task_specs", {}).items():
                file_tasks.register_recorded(task, recorded)  # Formatted and scored as in training, without its files.
            if methods.get(adapter.method).adapter is None:
                raise AdapterError(f"{adapter.path}: method {adapter.method} cannot be served from an adapter")
            for task in adapter.tasks:
                if task in self.adapter_of:
                    raise AdapterError(
                        f"task {task} is served by two adapters: {self.adapters[self.adapter_of[task]].path} "
                        f"and {adapter.path}; pass one of them"
                    )
                self.adapter_of[task] = i
        # Batches fit every adapter's lengths (each task trims to its own run's).
        self.pad_lengths = {
            key: max(a.config["sequence_length"][key] for a in self.adapters) for key in first.config["sequence_length"]
        }
        self.max_decode_len = max(a.config["eval"]["max_decode_len"] for a in self.adapters)

        # -- The frozen models, built once, then one SharPT per adapter around them. --
        uses_encoder = [methods.get(a.method).uses_encoder for a in self.adapters]
        config = _backbone_config(first.config, "sharpt" if any(uses_encoder) else "prompt_tuning")
        files = build.resolve_files(config)
        # The vocabularies of every task; the data folder (unused here) stays as the caller set it.
        settings = registry.SETTINGS
        tasks.configure(settings.data_dir, files.t5_vocab, files.encoder_vocab, settings.mixture_cap)
        backbone, identity = build.build_model(config, files, self.mesh)
        for adapter in self.adapters:
            source_stage.check_same_models(
                adapter.config, identity, f"adapter {adapter.path}", AdapterError, SAME_MODELS
            )
        nnx.update(backbone, self._placed(nnx.state(backbone)))
        self.models = [self._adapter_model(backbone, a) for a in self.adapters]
        split = [nnx.split(m, adapter_filter(m.method), lambda path, _: path[0] == "t5", ...) for m in self.models]
        self.graphdefs = [s[0] for s in split]
        self.adapter_states = [s[1] for s in split]
        self.t5_state = split[0][2]
        self.encoder_state = next((s[3] for s, uses in zip(split, uses_encoder, strict=True) if uses), None)
        self.uses_encoder = uses_encoder
        self._pipelines: dict[str, TaskPipeline] = {}
        self.seconds: dict[str, float] = {}  # Of the last `predict`: preprocessing, batches (the model).

    def _placed(self, state: nnx.State) -> nnx.State:
        return jax.device_put(state, sharding.state_shardings(state, self.mesh))

    def _adapter_model(self, backbone: SharPT, adapter: Adapter) -> SharPT:
        """A SharPT of the adapter's method around the shared frozen modules, holding the adapter's weights."""
        model_config = adapter.config["model"]
        model = SharPT(
            backbone.t5,
            backbone.instance_encoder,
            method=adapter.method,
            prompt_length=model_config["prompt_length"],
            num_skills=model_config["num_skills"],
            beta=model_config["beta"],
            rngs=nnx.Rngs(0),  # Replaced by the adapter's weights below.
        )
        flat = nnx.to_flat_state(nnx.state(model, adapter_filter(adapter.method)))
        expected = {optim.path_str(path): tuple(v.shape) for path, v in flat}
        found = {name: tuple(v.shape) for name, v in adapter.params.items()}
        if found != expected:
            raise AdapterError(
                f"{adapter.path}: weights {found} are not those of a {adapter.method} adapter {expected}"
            )
        state = nnx.from_flat_state([(path, v.replace(adapter.params[optim.path_str(path)])) for path, v in flat])
        nnx.update(model, self._placed(state))
        return model

    # -----------------------------------------------------------------------------------------
    # Rows -> predictions.
    # -----------------------------------------------------------------------------------------

    def predict(self, rows: Sequence[Mapping]) -> list[dict]:
        """One output dict per row, in order (see the module docstring).

        Raises:
          AdapterError: a row without a task, of an unknown task or a task no adapter serves, or missing fields.
        """
        start = time.perf_counter()
        by_task: dict[str, list[int]] = {}
        row_tasks = [self._check_row(i, row) for i, row in enumerate(rows)]
        for i, task in enumerate(row_tasks):
            by_task.setdefault(task, []).append(i)
        # Every example of every task, with its row and adapter.
        row_of, adapter_of, examples, tasks_of, features = [], [], [], [], []
        for task, indices in by_task.items():
            adapter = self.adapter_of[task]
            lengths = self.adapters[adapter].config["sequence_length"]
            if task not in self._pipelines:
                self._pipelines[task] = TaskPipeline(task, lengths, self.pad_lengths)
            rows_of_task, task_examples_, task_features = self._pipelines[task]([rows[i] for i in indices])
            row_of.append(np.asarray(indices)[rows_of_task])
            adapter_of.append(np.full(len(rows_of_task), adapter))
            examples += task_examples_
            tasks_of += [task] * len(task_examples_)
            features.append(task_features)
        row_of, adapter_of = np.concatenate(row_of), np.concatenate(adapter_of)
        features = {key: np.concatenate([f[key] for f in features if f]) for key in next(f for f in features if f)}
        order = np.argsort(row_of, kind="stable")  # Batches follow the input order.

        prepared = time.perf_counter()
        texts, skills = [None] * len(examples), np.full(len(examples), -1)
        for group in self._groups(order, adapter_of, tasks_of):
            for first in range(0, len(group), self.batch_size):
                chunk = group[first : first + self.batch_size]
                batch_texts, batch_skills = self._run(chunk, adapter_of, tasks_of, features)
                for i, text, skill in zip(chunk, batch_texts, batch_skills, strict=True):
                    texts[i], skills[i] = text, skill

        # The time of the two halves (benchmarks read it; results are fetched batch by batch, so this counts
        # the device work).
        self.seconds = {"preprocess": prepared - start, "model": time.perf_counter() - prepared}
        outputs = [
            {"task": row.get("task", task), "prediction": [], "text": [], "skill": []}
            for row, task in zip(rows, row_tasks, strict=True)
        ]
        for i in order:
            task_eval = registry.task_eval(tasks_of[i])
            prediction = scoring.postprocess_texts(task_eval, [examples[i]], [texts[i]])[0]
            out = outputs[row_of[i]]
            out["prediction"].append(_jsonable(prediction))
            out["text"].append(texts[i])
            out["skill"].append(int(skills[i]))
        for out in outputs:
            if all(skill < 0 for skill in out["skill"]):  # A method without a codebook.
                del out["skill"]
            if len(out["text"]) == 1:  # The row made one example: its values rather than lists.
                out.update({key: value[0] for key, value in out.items() if key != "task"})
        return outputs

    def _check_row(self, i: int, row: Mapping) -> str:
        """The row's task, after checking that an adapter serves it and that the row has its fields."""
        task = row.get("task") if isinstance(row, Mapping) else None
        if task is None and isinstance(row, Mapping) and len(self.adapter_of) == 1:
            task = next(iter(self.adapter_of))  # One task served: rows may leave it out.
        if not isinstance(task, str):
            raise AdapterError(f'row {i}: no "task" field; rows are {{"task": NAME, ...raw fields}}')
        task = task.removeprefix(registry.PREFIX)
        try:
            fields = registry.row_features(task)
        except KeyError as err:
            raise AdapterError(f"row {i}: unknown task {task!r}; tasks are {', '.join(tasks.names())}") from err
        if task not in self.adapter_of:
            raise AdapterError(
                f"row {i}: no adapter serves task {task}; the adapters serve {', '.join(self.adapter_of)}"
            )
        if missing := [f for f in fields if f not in row]:
            raise AdapterError(
                f"row {i} ({task}): missing field(s) {', '.join(missing)}; {task} rows have {', '.join(fields)}"
            )
        return task

    def _groups(self, order: np.ndarray, adapter_of: np.ndarray, tasks_of: list[str]) -> list[list[int]]:
        """The examples in `order`, grouped into what can share batches: decoded rows by prompt length, rank-
        classified rows by task."""
        groups: dict[tuple, list[int]] = {}
        for i in order:
            adapter = self.adapters[adapter_of[i]]
            key = ("rank", tasks_of[i]) if self._ranks(adapter, tasks_of[i]) else ("decode", _prompt_length(adapter))
            groups.setdefault(key, []).append(int(i))
        return list(groups.values())

    @staticmethod
    def _ranks(adapter: Adapter, task: str) -> bool:
        return registry.task_eval(task).ranks(adapter.config["eval"]["scoring"])

    def _run(self, chunk: list[int], adapter_of, tasks_of, features) -> tuple[list[str], np.ndarray]:
        """Texts and skills of the examples `chunk` (one group), padded with zero rows to `self.rows` rows."""
        pad = self.rows - len(chunk)
        rows = {key: np.pad(value[chunk], [(0, pad)] + [(0, 0)] * (value.ndim - 1)) for key, value in features.items()}
        batch = data.to_global(rows, self.mesh)
        task, adapter = tasks_of[chunk[0]], int(adapter_of[chunk[0]])
        if self._ranks(self.adapters[adapter], task):
            label_names = registry.task_eval(task).label_names
            targets_length = self.adapters[adapter].config["sequence_length"]["targets"]
            candidates = scoring.label_candidates(registry.targets_vocabulary(task), label_names, targets_length)
            graphdef, state = nnx.split(self.models[adapter])
            scores, skills = scoring.label_log_likelihoods(graphdef, state, batch, *candidates)
            texts = [label_names[c] for c in np.argmax(np.asarray(scores)[: len(chunk)], axis=-1)]
        else:
            # Every adapter of this prompt length takes part, so one program serves any mix of them.
            members = [
                a
                for a, other in enumerate(self.adapters)
                if _prompt_length(other) == _prompt_length(self.adapters[adapter])
            ]
            position = {a: k for k, a in enumerate(members)}
            index = np.zeros(self.rows, np.int32)
            index[: len(chunk)] = [position[int(adapter_of[i])] for i in chunk]
            tokens, skills = mixed_greedy_tokens(
                tuple(self.graphdefs[a] for a in members),
                tuple(self.uses_encoder[a] for a in members),
                tuple(self.adapter_states[a] for a in members),
                self.t5_state,
                self.encoder_state,
                batch,
                jax.device_put(index, sharding.batch_sharding(self.mesh)),
                max_decode_len=self.max_decode_len,
            )
            tokens = np.asarray(tokens)
            texts = []
            for i, row_tokens in zip(chunk, tokens, strict=False):  # Padding rows are left out.
                max_decode_len = self.adapters[int(adapter_of[i])].config["eval"]["max_decode_len"]
                texts.append(registry.targets_vocabulary(tasks_of[i]).decode(row_tokens[:max_decode_len].tolist()))
        skills = np.full(len(chunk), -1) if skills is None else np.asarray(skills)[: len(chunk)]
        return texts, skills


# ---------------------------------------------------------------------------------------------
# Helpers.
# ---------------------------------------------------------------------------------------------


def _prompt_length(adapter: Adapter) -> int:
    return adapter.config["model"]["prompt_length"]


def _check_same_backbone(adapter: Adapter, other: Adapter) -> None:
    """AdapterError unless `adapter` was trained with the frozen models of `other` and runs them alike."""
    source_stage.check_same_models(adapter.config, other.config, f"adapter {adapter.path}", AdapterError, SAME_MODELS)
    for part, key in (("t5", "vocab"), ("encoder", "vocab"), ("encoder", "pooling"), ("model", "backbone_dtype")):
        mine, yours = adapter.config[part][key], other.config[part][key]
        mine = mine["checksum"] if key == "vocab" else mine
        yours = yours["checksum"] if key == "vocab" else yours
        if mine != yours:
            raise AdapterError(
                f"adapters {adapter.path} and {other.path} differ in {part} {key} ({mine} against {yours}); "
                "adapters served together run their frozen models alike"
            )


def _backbone_config(adapter: dict, method: str):
    """A config that `build` turns into the adapter's frozen models (method: which of them to load)."""
    return build.model_config(
        method=method,
        t5=adapter["t5"]["path"],
        t5_vocab=adapter["t5"]["vocab"]["path"],
        t5_random=adapter["t5"]["random"] or {},
        encoder=adapter["encoder"]["path"],
        encoder_vocab=adapter["encoder"]["vocab"]["path"],
        encoder_pooling=adapter["encoder"]["pooling"],
        backbone_dtype=adapter["model"]["backbone_dtype"],
        prompt_length=adapter["model"]["prompt_length"],
        num_skills=adapter["model"]["num_skills"],
        beta=adapter["model"]["beta"],
    )


def _jsonable(value):
    """A postprocessed prediction (numpy scalars, bytes, lists, dicts) as JSON values."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value.item() if isinstance(value, np.generic) else value


def _read_rows(path: storage.Path) -> list[dict]:
    """The rows of the JSONL file `path`, read by the project's one row reader (`tasks.row_files`); ConfigError
    naming `path:line` for a line that is not a JSON object, or naming the file when it is missing or empty."""
    if not path.is_file():
        raise build.ConfigError(f"--input {path}: no such file")
    try:
        return [row for _, row in row_files.json_rows(path)]
    except row_files.DataError as err:
        raise build.ConfigError(str(err)) from err


def run(
    adapter: list[storage.Path],
    input: storage.Path,
    output: storage.Path,
    batch_size: int,
    t5: str | None,
    encoder: str | None,
):
    """`python -m sharpt_jax.predict`: the rows of the JSONL file `input` answered by the `adapter` folders,
    one JSON line per row written to `output` (see `sharpt_jax.predict` for the arguments)."""
    try:
        rows = _read_rows(input)  # First: a mistake in the file answers before any model loads.
        adapters = [load_adapter(path, t5=t5, encoder=encoder) for path in adapter]
        predictor = Predictor(adapters, batch_size=batch_size)
        start = time.perf_counter()
        outputs = predictor.predict(rows)
    except build.ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    seconds = time.perf_counter() - start
    storage.write_text(output, "".join(json.dumps(out, ensure_ascii=False) + "\n" for out in outputs))
    print(f"wrote {len(outputs)} predictions to {output} ({len(rows) / seconds:.1f} rows/s, compiles included)")
