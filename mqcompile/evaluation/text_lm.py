"""The text-LM task of the evaluation suite: Qwen2.5-Coder-0.5B-Instruct (Qwen2 decoder) on perplexity and
multiple-choice QA, offline.

Data (see ``docs/assets.md``, "Text LM"):

* English Wikipedia: the 106 articles of gensim 4.4.0's test dump, parsed with gensim's own ``extract_pages`` and
  ``filter_wiki`` (redirects skipped), lightly cleaned (:func:`clean_wiki_text`). Articles alternate in file order
  between evaluation (even index) and calibration (odd index), so the two are disjoint and do not depend on the seed.
  Each chunk is the first ``seq_len`` tokens of one article.
* CPython's ``pydoc_data.topics`` (reference-manual prose): evenly spaced ``seq_len``-token windows; a sanity set.
* News prose the calibration never draws from (issue #16): gensim 4.4.0's ``lee_background.cor``, the 300 Australian
  Broadcasting Corporation news articles of the Lee corpus, joined in file order; evenly spaced ``seq_len``-token
  windows (``ppl_news``).
* BIG-bench (1.0.0 sdist, read with ``tarfile``, never installed): ``general_knowledge``, ``physics``,
  ``physical_intuition``. Each option is scored by its mean token log-likelihood after the prompt (length
  normalized); the question is right when the best-scored option has the top target score. Several questions with
  all their options share one row through attention-mask segments (:func:`pack_questions`,
  :class:`mqcompile.models.qwen2_text.CausalLMForExport`): each option sees only the task prefix, its question and
  itself, as if scored alone, but the prefix and each question are computed once instead of once per option.

Example::

    task = TextLMTask(quick=True)
    specs = task.programs()
    metrics = task.evaluate({"lm": specs["lm"].program.module()})
"""

from __future__ import annotations

import bz2
import json
import logging
import math
import os
import random
import re
import tarfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import torch

from ..assets import EVAL_HINT, cache_dir, package_dir, pip_download
from ..errors import CheckpointError
from .base import Metric, ProgramSpec

__all__ = [
    "TextLMTask",
    "MC_TASKS",
    "clean_wiki_text",
    "parse_wiki_dump",
    "load_wiki_articles",
    "load_pydoc_text",
    "load_news_text",
    "load_bigbench_task",
    "pack_questions",
    "option_scores",
    "mc_correct",
    "chunk_nll",
    "perplexity",
]

log = logging.getLogger(__name__)

MC_TASKS: tuple[str, ...] = ("general_knowledge", "physics", "physical_intuition")
GENSIM_REQUIREMENT = "gensim==4.4.0"
WIKI_FILE = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
BIGBENCH_REQUIREMENT = "bigbench==1.0.0"
BIGBENCH_SDIST = "bigbench-1.0.0.tar.gz"
PROMPT = "Question: {question}\nAnswer:"


# --------------------------------------------------------------------------------------------------------------------
# Wikipedia
# --------------------------------------------------------------------------------------------------------------------

_HEADING = re.compile(r"^[ \t]*(=+)[ \t]*(.*?)[ \t]*\1[ \t]*$", re.MULTILINE)
_QUOTES = re.compile(r"'{2,}")
_SPACES = re.compile(r"[ \t]+")
_BLANKS = re.compile(r"\n\s*\n+")


def clean_wiki_text(text: str) -> str:
    """Tidy ``gensim.corpora.wikicorpus.filter_wiki`` output into prose: bold/italic quotes removed, ``== Heading ==``
    lines turned into plain lines, runs of spaces and blank lines collapsed, lines stripped.

    Example:
        >>> clean_wiki_text("'''Anarchism''' is  a\\n\\n\\n\\n==History==\\nOld.")
        'Anarchism is a\\n\\nHistory\\nOld.'
    """
    text = _HEADING.sub(lambda m: m.group(2), text)
    text = _QUOTES.sub("", text)
    text = _SPACES.sub(" ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    return _BLANKS.sub("\n\n", text).strip()


def _is_redirect(text: str) -> bool:
    return text.lstrip().lower().startswith("#redirect")


def parse_wiki_dump(fileobj: BinaryIO) -> list[tuple[str, str]]:
    """``[(title, cleaned text)]`` of the articles of a MediaWiki XML dump (uncompressed stream), redirects and
    empty pages skipped, in file order.

    Uses gensim's parser (``extract_pages`` + ``filter_wiki``): its wiki-markup filter is LGPL-2.1 code, so it is
    imported from the installed ``gensim`` rather than copied into this Apache-2.0 package. gensim is imported only
    here, and only when the parsed articles are not cached yet.
    """
    try:
        from gensim.corpora.wikicorpus import extract_pages, filter_wiki
    except ImportError:
        raise CheckpointError(f"{GENSIM_REQUIREMENT} is needed to parse the Wikipedia text; {EVAL_HINT}") from None
    articles = []
    for title, text, _page_id in extract_pages(fileobj):
        if not text or _is_redirect(text):
            continue
        cleaned = clean_wiki_text(filter_wiki(text))
        if cleaned:
            articles.append((title, cleaned))
    return articles


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, path)


def load_wiki_articles() -> list[tuple[str, str]]:
    """The 106 Wikipedia articles of gensim 4.4.0's test dump, parsed once and cached as JSON."""
    cached = cache_dir("data", "text_lm") / "enwiki-gensim-4.4.0.json"
    if cached.is_file():
        return [tuple(a) for a in json.loads(cached.read_text(encoding="utf-8"))]
    dump = package_dir("gensim") / WIKI_FILE
    if not dump.is_file():
        raise CheckpointError(f"{dump} is missing: install {GENSIM_REQUIREMENT}; {EVAL_HINT}")
    start = time.perf_counter()
    with bz2.open(dump, "rb") as f:
        articles = parse_wiki_dump(f)
    if len(articles) < 50:
        raise CheckpointError(f"{dump.name} gave only {len(articles)} articles; reinstall {GENSIM_REQUIREMENT}")
    _write_json(cached, articles)
    log.info("parsed %d Wikipedia articles in %.1f s (into %s)", len(articles), time.perf_counter() - start, cached)
    return articles


NEWS_FILE = "test/test_data/lee_background.cor"


def load_news_text() -> str:
    """The Lee corpus' 300 ABC news articles (gensim's test data), one per paragraph, in file order."""
    path = package_dir("gensim") / NEWS_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; reinstall {GENSIM_REQUIREMENT} (pip install -e '.[eval]')")
    lines = path.read_text(encoding="latin-1").splitlines()
    return "\n\n".join(line.strip() for line in lines if line.strip())


#: BIG-bench tasks whose inputs are narrative prose (stories, dilemmas, fables): a calibration source of another
#: kind than Wikipedia (``calib_sources``), never scored; the multiple-choice tasks of :data:`MC_TASKS` are not among
#: them
PROSE_TASKS = ("causal_judgment", "moral_permissibility", "understanding_fables", "fantasy_reasoning")
CALIB_SOURCES = ("wiki", "bigbench")


def load_bigbench_prose() -> str:
    """The inputs of the :data:`PROSE_TASKS` (each text once, in task and file order), blank-line separated."""
    seen: dict[str, None] = {}
    for task in PROSE_TASKS:
        for example in load_bigbench_task(task)["examples"]:
            seen.setdefault(example["input"].strip(), None)
    return "\n\n".join(seen)


def load_pydoc_text() -> str:
    """CPython's ``pydoc_data.topics`` (reference-manual prose), topics in sorted order, blank-line separated."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key].strip() for key in sorted(topics))


# --------------------------------------------------------------------------------------------------------------------
# BIG-bench
# --------------------------------------------------------------------------------------------------------------------


def _bigbench_member(task: str) -> str:
    return f"bigbench-1.0.0/bigbench/benchmark_tasks/{task}/task.json"


def load_bigbench_task(task: str) -> dict[str, Any]:
    """One BIG-bench ``task.json`` (``examples`` with ``input`` and ``target_scores``, maybe ``task_prefix``).

    The first call downloads the bigbench 1.0.0 sdist once (``pip download --no-deps``, 358 MB, into the cache) and
    extracts the ``task.json`` of every task in :data:`MC_TASKS` with ``tarfile``; bigbench is never installed.
    """
    folder = cache_dir("data", "bigbench")
    path = folder / f"{task}.json"
    if not path.is_file():
        wanted = {_bigbench_member(t): t for t in {*MC_TASKS, *PROSE_TASKS, task}}
        sdist = pip_download(BIGBENCH_REQUIREMENT, BIGBENCH_SDIST)
        found = set()
        start = time.perf_counter()
        with tarfile.open(sdist, "r:gz") as tar:
            for member in tar:
                if member.name in wanted and member.isfile():
                    data = json.loads(tar.extractfile(member).read().decode("utf-8"))
                    _write_json(folder / f"{wanted[member.name]}.json", data)
                    found.add(wanted[member.name])
        log.info("extracted %s from %s in %.1f s", sorted(found), sdist.name, time.perf_counter() - start)
        if task not in found:
            raise CheckpointError(f"BIG-bench task {task!r} is not in {sdist.name}")
    data = json.loads(path.read_text(encoding="utf-8"))
    if not data.get("examples") or not all("target_scores" in e and "input" in e for e in data["examples"]):
        raise CheckpointError(f"{path} is not a multiple-choice BIG-bench task; delete it to extract it again")
    return data


def pack_questions(
    prefix_ids: Sequence[int], questions: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]]
) -> tuple[list[int], list[int], list[tuple[int, list[tuple[int, int]]]]]:
    """One row holding a shared prefix and several questions with all their options: ``(ids, segments, layout)``.

    ``segments`` is the attention mask of :class:`~mqcompile.models.qwen2_text.CausalLMForExport`: 1 for the prefix,
    ``64 * g`` for question ``g`` (from 1) and ``64 * g + k`` for its option ``k`` (from 1), so each option sees the
    prefix, its question and itself only. ``layout[g - 1] = (last, spans)``: the position of the question's last
    token and the ``[start, end)`` of each option in the row.

    Example:
        >>> pack_questions([1], [([5, 6], [[7], [8, 9]]), ([4], [[3]])])
        ([1, 5, 6, 7, 8, 9, 4, 3], [1, 64, 64, 65, 66, 66, 128, 129], [(2, [(3, 4), (4, 6)]), (6, [(7, 8)])])
    """
    from ..models.qwen2_text import SEGMENT_GROUP

    ids, segments, layout = list(prefix_ids), [1] * len(prefix_ids), []
    for g, (question, options) in enumerate(questions, start=1):
        if not question or not options or any(not o for o in options):
            raise ValueError(f"question {g}: the question and every option need at least one token")
        if len(options) >= SEGMENT_GROUP:
            raise ValueError(f"question {g} has {len(options)} options; at most {SEGMENT_GROUP - 1} fit a group")
        ids.extend(question)
        segments.extend([SEGMENT_GROUP * g] * len(question))
        last, spans = len(ids) - 1, []
        for k, option in enumerate(options, start=1):
            start = len(ids)
            ids.extend(option)
            segments.extend([SEGMENT_GROUP * g + k] * len(option))
            spans.append((start, len(ids)))
        layout.append((last, spans))
    return ids, segments, layout


def option_scores(logits: torch.Tensor, ids: Sequence[int], last: int, spans: Sequence[tuple[int, int]]) -> list[float]:
    """Length-normalized log-likelihood (mean log-probability of its tokens) of each option of one question.

    ``logits`` is ``(S, vocab)`` for the packed row. The first token of every option is predicted from the question's
    last token (position ``last``), later tokens from the previous token of the same option.

    Example:
        >>> logits = torch.zeros(5, 3); logits[1, 2] = 9.0; logits[3, 0] = 9.0
        >>> [round(s, 2) for s in option_scores(logits, [0, 0, 2, 1, 0], 1, [(2, 3), (3, 5)])]
        [-0.0, -4.5]
    """
    sources, targets, owner = [], [], []
    for k, (start, end) in enumerate(spans):
        positions = [last, *range(start, end - 1)]
        sources.extend(positions)
        targets.extend(ids[start:end])
        owner.extend([k] * (end - start))
    picked = logits[torch.tensor(sources, device=logits.device)].float().log_softmax(-1)
    token_lp = picked.gather(-1, torch.tensor(targets, device=logits.device)[:, None])[:, 0]
    owner_t = torch.tensor(owner, device=logits.device)
    totals = torch.zeros(len(spans), dtype=token_lp.dtype, device=logits.device).index_add_(0, owner_t, token_lp)
    counts = torch.tensor([end - start for start, end in spans], dtype=token_lp.dtype, device=logits.device)
    return (totals / counts).tolist()


def mc_correct(target_scores: Sequence[float], scores: Sequence[float]) -> bool:
    """Whether the best-scored option (first on ties) has the top target score (ties in targets all count).

    Example:
        >>> mc_correct([0, 1, 0], [-2.0, -0.5, -1.0]), mc_correct([0, 1, 0], [-0.1, -0.5, -1.0])
        (True, False)
    """
    if len(target_scores) != len(scores) or not scores:
        raise ValueError(f"{len(target_scores)} target scores for {len(scores)} option scores")
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))
    return target_scores[best] == max(target_scores)


def chunk_nll(module: Callable[..., torch.Tensor], chunks: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Summed next-token negative log-likelihood of each chunk of ``chunks`` ``(N, S)`` (each chunk on its own, its
    first token unscored), ``batch_size`` chunks per forward: ``(N,)`` float64."""
    sums = []
    for start in range(0, chunks.shape[0], batch_size):
        ids = chunks[start : start + batch_size]
        begin = time.perf_counter()
        logits = module(input_ids=ids, attention_mask=torch.ones_like(ids))
        log.debug("perplexity batch %s in %.2f s", tuple(ids.shape), time.perf_counter() - begin)
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().flatten(0, 1), ids[:, 1:].flatten(), reduction="none"
        )
        sums.append(nll.view(ids.shape[0], -1).double().sum(-1))
        del logits, nll
    return torch.cat(sums)


def perplexity(module: Callable[..., torch.Tensor], chunks: torch.Tensor, batch_size: int = 8) -> float:
    """``exp`` of the mean next-token negative log-likelihood over ``chunks`` ``(N, S)`` (see :func:`chunk_nll`).

    Example:
        >>> uniform = lambda input_ids, attention_mask: torch.zeros(*input_ids.shape, 50)
        >>> round(perplexity(uniform, torch.randint(0, 50, (3, 9))), 3)
        50.0
    """
    sums = chunk_nll(module, chunks, batch_size)
    return math.exp(float(sums.sum()) / (chunks.shape[0] * (chunks.shape[1] - 1)))


# --------------------------------------------------------------------------------------------------------------------
# The task
# --------------------------------------------------------------------------------------------------------------------


class TextLMTask:
    """Qwen2.5-Coder-0.5B-Instruct: perplexity on Wikipedia and pydoc prose, BIG-bench multiple choice.

    Args:
        quick: a small slice for smoke runs (seeded subsets of the BIG-bench questions, fewer and shorter chunks).
        seed: picks the quick-mode question subsets (full mode uses every question; the data split is fixed).
        ppl_chunks: Wikipedia (and pydoc, news) chunks to score; default 8 (quick 2) for Wikipedia, half that for
            pydoc and for news.
        seq_len: tokens per perplexity chunk and per calibration sequence; default 256 (quick 128).
        mc_questions: cap on the questions per BIG-bench task (seeded subset); default all (quick 12/2/4).
        calib_batches: calibration batches of one ``seq_len`` sequence each; default 8 (quick 2).
        calib_sources: where calibration sequences come from, taken in turn: ``"wiki"`` (the articles the
            evaluation does not use) and ``"bigbench"`` (narrative prose of :data:`PROSE_TASKS`). Default both, since
            2026-12-03: no worse on wiki and better on the held-out pydoc and news in 3 of 3 measured comparisons
            (``docs/calibration_mix.md``); result files written before then calibrated on wiki only. Neither source
            is pydoc or news, which stay text the calibration never drew from.

    Program ``lm``: ``(input_ids, attention_mask) -> logits`` (:func:`~mqcompile.models.qwen2_text.export_causal_lm`).
    """

    name = "qwen2-0.5b"
    metrics = (
        Metric("ppl_wiki", higher_is_better=False),
        Metric("ppl_pydoc", higher_is_better=False),
        Metric("ppl_news", higher_is_better=False),
        *(Metric(f"acc_{t}", higher_is_better=True, fmt="{:.1f}") for t in MC_TASKS),
    )
    #: tokens per forward (rows x padded length) when scoring BIG-bench questions
    mc_token_budget = 2048
    #: most tokens in one packed BIG-bench row (longer rows cost more attention: S x S per layer)
    mc_row_tokens = 512
    #: perplexity chunks per forward
    ppl_batch = 8

    def __init__(
        self,
        quick: bool = False,
        seed: int = 0,
        *,
        ppl_chunks: int | None = None,
        seq_len: int | None = None,
        mc_questions: int | Mapping[str, int] | None = None,
        calib_batches: int | None = None,
        calib_sources: Sequence[str] = CALIB_SOURCES,
    ):
        unknown = [c for c in calib_sources if c not in CALIB_SOURCES]
        if unknown or not calib_sources:
            raise ValueError(f"calib_sources {tuple(calib_sources)!r}: choose one or more of {CALIB_SOURCES}")
        self.calib_sources = tuple(calib_sources)
        self.quick, self.seed = quick, seed
        self.seq_len = seq_len or (128 if quick else 256)
        self.wiki_chunks = ppl_chunks or (2 if quick else 8)
        self.pydoc_chunks = max(1, self.wiki_chunks // 2)
        self.calib_batches = calib_batches or (2 if quick else 8)
        if mc_questions is None and quick:
            mc_questions = {"general_knowledge": 12, "physics": 2, "physical_intuition": 4}
        if isinstance(mc_questions, int) or mc_questions is None:
            mc_questions = {t: mc_questions for t in MC_TASKS}
        self.mc_questions: dict[str, int | None] = {t: mc_questions.get(t) for t in MC_TASKS}
        self._tokenizer = None
        self._data: dict[str, Any] | None = None
        self.model = None

    # ---- data ----------------------------------------------------------------------------------------------------

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            from .checkpoints.qwen2_text import CACHE_NAME, load_qwen2_text

            folder = cache_dir("models") / CACHE_NAME
            if (folder / "tokenizer.json").is_file():
                self._tokenizer = AutoTokenizer.from_pretrained(folder)
            else:
                _, self._tokenizer = load_qwen2_text()
        return self._tokenizer

    def _article_chunks(self, articles: Iterable[tuple[str, str]], n: int) -> torch.Tensor:
        """The first ``seq_len`` tokens of each of the first ``n`` articles that have that many."""
        rows = []
        for _title, text in articles:
            ids = self.tokenizer(text[: self.seq_len * 8]).input_ids  # ~4 characters a token: plenty
            if len(ids) >= self.seq_len:
                rows.append(ids[: self.seq_len])
            if len(rows) == n:
                break
        if len(rows) < n:
            raise CheckpointError(f"only {len(rows)} articles have {self.seq_len} tokens, {n} needed")
        return torch.tensor(rows, dtype=torch.long)

    def _pydoc_chunks(self, n: int, text: str | None = None, what: str = "pydoc_data.topics") -> torch.Tensor:
        ids = self.tokenizer(load_pydoc_text() if text is None else text).input_ids
        windows = len(ids) // self.seq_len
        if windows < n:
            raise CheckpointError(f"{what} has {windows} windows of {self.seq_len} tokens, {n} needed")
        picks = [round(i * (windows - 1) / max(n - 1, 1)) for i in range(n)]
        return torch.tensor([ids[p * self.seq_len : (p + 1) * self.seq_len] for p in picks], dtype=torch.long)

    def _calibration_chunks(self, wiki_articles: Sequence[tuple[str, str]]) -> torch.Tensor:
        """``calib_batches`` sequences, the sources taken in turn (so any prefix of them mixes the sources too)."""
        k = len(self.calib_sources)
        counts = [self.calib_batches // k + (i < self.calib_batches % k) for i in range(k)]
        chunks = {
            source: self._article_chunks(wiki_articles, n) if source == "wiki"
            else self._pydoc_chunks(n, load_bigbench_prose(), "the BIG-bench prose tasks")
            for source, n in zip(self.calib_sources, counts) if n
        }  # fmt: skip
        order = [chunks[s][i] for i in range(max(counts)) for s, n in zip(self.calib_sources, counts) if i < n]
        return torch.stack(order)

    def _mc_rows(self, task: str) -> list[dict[str, Any]]:
        """The task's questions packed into rows of at most ``mc_row_tokens`` (the task prefix once per row)."""
        data = load_bigbench_task(task)
        examples = data["examples"]
        limit = self.mc_questions[task]
        if limit is not None and limit < len(examples):
            order = random.Random(f"{self.seed}:{task}").sample(range(len(examples)), limit)
            examples = [examples[i] for i in sorted(order)]
        tok = self.tokenizer
        prefix = tok(data["task_prefix"]).input_ids if data.get("task_prefix") else []
        questions = []
        for example in examples:
            options = list(example["target_scores"])
            q_ids = tok(PROMPT.format(question=example["input"].strip())).input_ids
            o_ids = [tok(" " + str(o).strip()).input_ids for o in options]
            targets = [float(example["target_scores"][o]) for o in options]
            questions.append((q_ids, o_ids, targets))
        rows, current, length = [], [], len(prefix)
        for q in questions:
            size = len(q[0]) + sum(len(o) for o in q[1])
            if current and length + size > self.mc_row_tokens:
                rows.append(current)
                current, length = [], len(prefix)
            current.append(q)
            length += size
        if current:
            rows.append(current)
        packed = []
        for row in rows:
            ids, segments, layout = pack_questions(prefix, [(q, o) for q, o, _ in row])
            targets = [t for _, _, t in row]
            packed.append({"task": task, "ids": ids, "segments": segments, "layout": layout, "targets": targets})
        return packed

    def data(self) -> dict[str, Any]:
        """Token tensors for everything: wiki/pydoc chunks, calibration sequences, packed BIG-bench rows (cached)."""
        if self._data is None:
            start = time.perf_counter()
            articles = load_wiki_articles()
            evaluation, calibration = articles[0::2], articles[1::2]
            self._data = {
                "wiki": self._article_chunks(evaluation, self.wiki_chunks),
                "pydoc": self._pydoc_chunks(self.pydoc_chunks),
                "news": self._pydoc_chunks(self.pydoc_chunks, load_news_text(), "the Lee news corpus"),
                "calibration": self._calibration_chunks(calibration),
                "mc": {t: self._mc_rows(t) for t in MC_TASKS},
            }
            mc_rows = [r for rows in self._data["mc"].values() for r in rows]
            log.info(
                "text data: %d wiki + %d pydoc chunks of %d tokens, %d MC questions (%d tokens), in %.1f s",
                self.wiki_chunks,
                self.pydoc_chunks,
                self.seq_len,
                sum(len(r["layout"]) for r in mc_rows),
                sum(len(r["ids"]) for r in mc_rows),
                time.perf_counter() - start,
            )
        return self._data

    # ---- Task protocol -------------------------------------------------------------------------------------------

    def programs(self) -> dict[str, ProgramSpec]:
        from ..models.qwen2_text import export_causal_lm
        from .checkpoints.qwen2_text import load_qwen2_text

        data = self.data()
        model, tokenizer = load_qwen2_text()
        self._tokenizer = tokenizer
        self.model = model  # the HF model behind the program (same weight tensors, no extra memory)
        example = torch.cat([data["wiki"][:1], data["calibration"][:1]])[:, :16].clone()  # batch 2: dynamic dims
        program = export_causal_lm(model, example, torch.ones_like(example))
        calibration = [
            {"input_ids": row[None].clone(), "attention_mask": torch.ones_like(row[None])}
            for row in data["calibration"]
        ]
        probe_ids = data["wiki"][:1, : min(self.seq_len, 128)].clone()
        probe = {"input_ids": probe_ids, "attention_mask": torch.ones_like(probe_ids)}
        return {"lm": ProgramSpec(program=program, calibration=calibration, probe=probe, config={})}

    def _mc_correct(self, module: Callable[..., torch.Tensor], rows: list[dict[str, Any]]) -> dict[str, list[int]]:
        """``{task: [correct, total]}`` over packed rows, batched by :attr:`mc_token_budget` (rows sorted by length,
        tasks mixed: fewer, larger forwards run faster on CPU)."""
        pad = int(self.tokenizer.pad_token_id or 0)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]["ids"]))
        tally: dict[str, list[int]] = {}
        i = 0
        while i < len(order):
            batch = [rows[order[i]]]
            i += 1
            while i < len(order) and (len(batch) + 1) * len(rows[order[i]]["ids"]) <= self.mc_token_budget:
                batch.append(rows[order[i]])
                i += 1
            width = max(len(r["ids"]) for r in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for b, r in enumerate(batch):
                ids[b, : len(r["ids"])] = torch.tensor(r["ids"])
                mask[b, : len(r["segments"])] = torch.tensor(r["segments"])
            start = time.perf_counter()
            logits = module(input_ids=ids, attention_mask=mask)
            log.debug("MC batch %s in %.2f s (%d/%d rows)", tuple(ids.shape), time.perf_counter() - start, i, len(rows))
            for b, r in enumerate(batch):
                counts = tally.setdefault(r["task"], [0, 0])
                for (last, spans), targets in zip(r["layout"], r["targets"]):
                    counts[0] += mc_correct(targets, option_scores(logits[b], r["ids"], last, spans))
                    counts[1] += 1
            del logits
        return tally

    def perplexities(self, module: Callable[..., torch.Tensor]) -> dict[str, float]:
        """``ppl_wiki``, ``ppl_pydoc`` and ``ppl_news`` of ``module`` (called as ``module(input_ids=,
        attention_mask=) -> logits``; the first part of :meth:`evaluate`)."""
        data = self.data()
        wiki, pydoc, news = data["wiki"], data["pydoc"], data["news"]
        with torch.inference_mode():
            sums = chunk_nll(module, torch.cat([wiki, pydoc, news]), self.ppl_batch)
        cuts = {"wiki": (0, len(wiki)), "pydoc": (len(wiki), len(wiki) + len(pydoc))}
        cuts["news"] = (len(wiki) + len(pydoc), len(sums))
        return {
            f"ppl_{n}": math.exp(float(sums[a:b].sum()) / ((b - a) * (self.seq_len - 1))) for n, (a, b) in cuts.items()
        }

    def evaluate(self, modules: Mapping[str, Callable[..., Any]]) -> dict[str, float]:
        module = modules["lm"]
        data = self.data()
        with torch.inference_mode():
            start = time.perf_counter()
            out = self.perplexities(module)
            ppl_s = time.perf_counter() - start
            start = time.perf_counter()
            tally = self._mc_correct(module, [r for task in MC_TASKS for r in data["mc"][task]])
            for task in MC_TASKS:
                correct, total = tally.get(task, (0, 0))
                out[f"acc_{task}"] = 100.0 * correct / max(total, 1)
            log.info("perplexity in %.1f s, multiple choice in %.1f s: %s", ppl_s, time.perf_counter() - start, out)
        return out
