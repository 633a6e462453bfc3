"""Inference and scoring: a model's K sequences per generation strategy, recognition, and ED metrics.

Everything is batched; `forecast_split` runs the model once per batch and applies every requested
generator to the batch's logits (or, for an autoregressive decoder, to the decoder itself over the
batch's context), so memory stays bounded for any split size. Metric names say what
each number is: `<method>.<what>`, e.g. `model.sample.action_ed`, `frequency_prior.verb_aued`.
"""
from __future__ import annotations

import contextlib
import logging
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from features.metric import edit_distance_table, lta_metrics
from train_heads.data import DeviceWindows, FeatureBank, iterate_batches
from train_heads.generators import AutoregressiveSource, LogitsSource

log = logging.getLogger(__name__)


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA when `enabled`; a no-op on the CPU (fp32 there, deterministic)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass
class SplitForecast:
    sequences: dict[str, tuple[np.ndarray, np.ndarray]]  # generator name -> (verb (W,K,Z), noun (W,K,Z))
    observed_verb: np.ndarray | None  # (W, N_in) recognised verbs (argmax of the recognition head)
    observed_noun: np.ndarray | None


class Abandoned(Exception):
    """`forecast_split` stopped early because its `stop()` returned true (SIGTERM / SIGINT during validation)."""


def generator_seed(seed: int, name: str) -> int:
    """The seed of generator `name`'s draws: a function of `seed` and the generator's *name*, never of its
    position in a list, so `lta evaluate generators=[a,b]` and `lta predict generator=b` (then `lta score`)
    draw the same sequences and agree to the last digit."""
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode("utf-8"))) % (2**63 - 1)


@torch.no_grad()
def forecast_split(model: torch.nn.Module, data: DeviceWindows, bank: FeatureBank, *, generators: dict[str, Any],
                   k: int = 5, seed: int = 0, batch_size: int = 512, amp: bool = True,
                   stop: Callable[[], bool] | None = None, progress: bool | None = None) -> SplitForecast:
    """K sequences per window for each generator (view 0, eval mode, seeded draws).

    `stop()` is checked before every batch (raises `Abandoned`); `progress` shows a tqdm bar over the batches
    (None: only on a TTY, False: never).

    A per-position-logits model runs once per batch and every generator reads its logits; an autoregressive
    model's decoder runs inside each generator (`AutoregressiveSource`: ancestral sampling / beams over the
    batch's encoded context). A generator that `requires_autoregressive` on a logits model is an error.
    """
    was_training = model.training
    model.eval()
    rngs = {name: torch.Generator(device="cpu").manual_seed(generator_seed(seed, name)) for name in generators}
    seqs: dict[str, list] = {name: [] for name in generators}
    obs_v, obs_n = [], []
    autoregressive = bool(getattr(model, "autoregressive", False))
    for name, gen in generators.items():
        if getattr(gen, "requires_autoregressive", False) and not autoregressive:
            raise ValueError(f"generator {name!r} needs an autoregressive decoder; this model's decoder emits "
                             f"per-position logits (use sample, greedy+sample, mbr or mbr_set)")
    from tqdm import tqdm

    bar = tqdm(total=-(-len(data) // batch_size), unit="batch", desc="forecast", leave=True,
               disable=None if progress is None else not progress)
    for batch in iterate_batches(data, bank, batch_size=batch_size, train=False):
        if stop is not None and stop():
            bar.close()
            model.train(was_training)
            raise Abandoned("forecast_split: stop requested")
        bar.update()
        with autocast(data.device, amp):
            if autoregressive:  # the decoder runs inside the generators (ancestral sampling, beams)
                fused, tokens, pooled = model.context(batch.inputs)
                out = model.recognise(fused)
                source = AutoregressiveSource(model.decoder, pooled, tokens)
            else:
                out = model(batch.inputs)
                source = LogitsSource(out["verb"].float().cpu(), out["noun"].float().cpu())
                prior = getattr(model, "pair_prior", None)  # read by the pair_sample generator
                source.pair_log_pmi = prior.log_pmi.cpu() if prior is not None else None
            for name, gen in generators.items():
                seqs[name].append(gen.generate_from(source, k=k, rng=rngs[name]))
        if "obs_verb" in out:
            obs_v.append(out["obs_verb"].argmax(-1).cpu().numpy())
            obs_n.append(out["obs_noun"].argmax(-1).cpu().numpy())
    bar.close()
    model.train(was_training)
    z = data.future_verb.shape[1]
    empty = np.zeros((0, k, z), dtype=np.int64)
    sequences = {name: (np.concatenate([v for v, _ in parts]) if parts else empty,
                        np.concatenate([n for _, n in parts]) if parts else empty) for name, parts in seqs.items()}
    has_rec = bool(obs_v) or (len(data) == 0 and getattr(model, "recognition", None) is not None)
    n_in = data.observed_rows.shape[1]
    return SplitForecast(
        sequences,
        np.concatenate(obs_v) if obs_v else (np.zeros((0, n_in), np.int64) if has_rec else None),
        np.concatenate(obs_n) if obs_n else (np.zeros((0, n_in), np.int64) if has_rec else None),
    )


def score_sequences(prefix: str, verb: np.ndarray, noun: np.ndarray, future_verb: np.ndarray,
                    future_noun: np.ndarray, *, num_nouns: int) -> dict[str, Any]:
    """ED@Z and AUED for verbs, nouns and actions, and the mean ED@z curves, under `<prefix>.`."""
    m = lta_metrics(verb, noun, future_verb, future_noun, num_nouns=num_nouns)
    return {f"{prefix}.{name}": value for name, value in m.items() if name != "num_samples"}


def sequence_edit_distances(verb: np.ndarray, noun: np.ndarray, future_verb: np.ndarray, future_noun: np.ndarray,
                            *, num_nouns: int) -> np.ndarray:
    """Action edit distance / Z of every candidate: (W, K, Z) predictions vs (W, Z) labels -> (W, K).

    The minimum over K of a window's row is that window's action ED@Z (what `score_sequences` averages).
    """
    w, k, z = np.shape(verb)
    action = np.asarray(verb, dtype=np.int64) * num_nouns + np.asarray(noun, dtype=np.int64)  # (W, K, Z)
    label = np.asarray(future_verb, dtype=np.int64) * num_nouns + np.asarray(future_noun, dtype=np.int64)  # (W, Z)
    if w == 0:
        return np.zeros((0, k))
    table = edit_distance_table(action.reshape(w * k, z), np.repeat(label, k, axis=0))  # (W*K, Z) prefix distances
    return table[:, -1].reshape(w, k) / z


def recognition_accuracy(prefix: str, pred_verb: np.ndarray, pred_noun: np.ndarray, verb: np.ndarray,
                         noun: np.ndarray) -> dict[str, float]:
    """Top-1 verb / noun / action accuracy over the observed segments of the windows."""
    if verb.size == 0:
        return {}
    return {
        f"{prefix}.verb_acc": float((pred_verb == verb).mean()),
        f"{prefix}.noun_acc": float((pred_noun == noun).mean()),
        f"{prefix}.action_acc": float(((pred_verb == verb) & (pred_noun == noun)).mean()),
    }


def plot_ed_curves(metrics: dict[str, Any], path: str, *, title: str = "") -> None:
    """PNG of the mean action ED@z, z = 1..Z, for every method in `metrics` (`*.action_ed_curve`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, what in zip(axes, ("verb", "noun", "action")):
        for name, curve in sorted(metrics.items()):
            if name.endswith(f".{what}_ed_curve") and curve:
                ax.plot(np.arange(1, len(curve) + 1), curve, label=name[: -len(f".{what}_ed_curve")])
        ax.set_xlabel("z (forecast prefix length)")
        ax.set_ylabel(f"{what} ED@z")
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=7, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def merge_evaluations(previous: dict[str, Any], new: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """`new` (an `lta evaluate` result with its `fingerprint`) merged over `previous` (the run's stored one), and
    the methods kept from `previous`.

    The results are merged only when both scored the same checkpoint bytes (sha256) with the same inputs and
    settings, everything but which generators and baselines were scored: then a partial evaluate (e.g.
    `generators=[sample]`) adds to or refreshes its methods and keeps the others', and the fingerprint lists the
    union. Otherwise `new` replaces `previous` (the list is empty)."""
    from train_heads.fingerprint import SCORED_FIELDS, with_id

    old_fp, new_fp = previous.get("fingerprint") or {}, new["fingerprint"]
    if not old_fp or any(old_fp.get(k) != v for k, v in new_fp.items() if k not in (*SCORED_FIELDS, "id")):
        return dict(new), []
    scored = {f"{m}." for m in scored_methods(new)}
    kept = [m for m in scored_methods(previous) if f"{m}." not in scored]
    merged = {k: v for k, v in previous.items() if any(k.startswith(f"{m}.") for m in kept)}
    merged.update(new)
    merged["fingerprint"] = with_id({**new_fp, **{k: list(dict.fromkeys([*old_fp.get(k, []), *new_fp[k]]))
                                                  for k in SCORED_FIELDS}})
    merged["oracle_methods"] = [m for m in ORACLE_METHODS if f"{m}.action_ed" in merged]
    return merged, kept


def scored_methods(metrics: dict[str, Any]) -> list[str]:
    """The scored methods of an evaluation: `model.<generator>` and the baselines (`<method>.action_ed`)."""
    return [k[: -len(".action_ed")] for k in metrics if k.endswith(".action_ed")]


def select_generator(metrics: dict[str, Any]) -> str:
    """The generator `lta predict` uses by default: the lowest action ED among those the evaluation scored
    (`fingerprint.generators`, in that order on a tie)."""
    generators = [g for g in metrics["fingerprint"]["generators"] if f"model.{g}.action_ed" in metrics]
    return min(generators, key=lambda g: (metrics[f"model.{g}.action_ed"], generators.index(g)))


# methods whose predictions read the evaluated split's true labels: upper bounds, not comparable with the model
ORACLE_METHODS = ("markov_oracle",)


MARKOV_VARIANTS = ("markov_knn", "markov_oracle")  # the Markov baseline fed by a kNN recogniser / the true labels


def evaluation_baselines() -> list[str]:
    """Baseline names `evaluate_split` accepts: the registered ones plus the Markov variants."""
    from train_heads.baselines import list_baselines

    return sorted([*list_baselines(), *MARKOV_VARIANTS])


def evaluate_split(model: torch.nn.Module | None, *, train_set: Any, windows: Any, bank: FeatureBank,
                   generators: dict[str, Any], baselines: Sequence[str] = ("frequency_prior", "markov", "knn_retrieval"),
                   k: int = 5, seed: int = 0, batch_size: int = 512, amp: bool = True,
                   device: str | torch.device = "cpu") -> dict[str, Any]:
    """Model (per generator) and no-training baselines side by side on one labelled split.

    The Markov baseline is fed with the model's recognised observed actions (`markov`), with a kNN
    classifier's (`markov_knn`) and, as an upper bound, with the true observed labels (`markov_oracle`);
    `markov` gives all three, `markov_knn` / `markov_oracle` one each (see `evaluation_baselines`).
    """
    from train_heads.baselines import KNNRecognizer, create_baseline
    from train_heads.data import DeviceWindows

    num_nouns = train_set.num_nouns
    fv, fn = windows.future_verb, windows.future_noun
    metrics: dict[str, Any] = {"num_windows": len(windows), "num_dropped_windows": len(windows.dropped_keys)}
    recognised: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if model is not None:
        data = DeviceWindows(windows, device)
        fc = forecast_split(model, data, bank.to(device), generators=generators, k=k, seed=seed,
                            batch_size=batch_size, amp=amp)
        for name, (verb, noun) in fc.sequences.items():
            metrics.update(score_sequences(f"model.{name}", verb, noun, fv, fn, num_nouns=num_nouns))
        if fc.observed_verb is not None:
            recognised["markov"] = (fc.observed_verb, fc.observed_noun)
            metrics.update(recognition_accuracy("model.recognition", fc.observed_verb, fc.observed_noun,
                                                windows.observed_verb, windows.observed_noun))
    import time

    from tqdm import tqdm

    # progress: a bar over the steps on a terminal, and a line per step with its time (also into a pipe / log)
    bar = tqdm(total=1 + len(baselines), unit="step", desc="baselines", disable=None)
    t0 = time.perf_counter()
    knn = KNNRecognizer(seed=seed).fit(train_set)
    recognised["markov_knn"] = knn.predict(windows, bank)
    metrics.update(recognition_accuracy("knn.recognition", *recognised["markov_knn"], windows.observed_verb,
                                        windows.observed_noun))
    recognised["markov_oracle"] = (windows.observed_verb, windows.observed_noun)
    log.info("baselines: kNN recognition of %d windows' observed segments in %.1f s", len(windows), time.perf_counter() - t0)
    bar.update()
    for i, name in enumerate(baselines, start=1):
        t0 = time.perf_counter()
        baseline = create_baseline("markov" if name in MARKOV_VARIANTS else name).fit(train_set)
        variants = [v for v in recognised if v.startswith("markov")] if name == "markov" else [name]
        for variant in variants:
            rng = torch.Generator().manual_seed(seed)
            verb, noun = baseline.predict(windows, bank, k=k, rng=rng, recognised=recognised.get(variant))
            metrics.update(score_sequences(variant, verb, noun, fv, fn, num_nouns=num_nouns))
        log.info("baselines: %d/%d %s on %d windows in %.1f s", i, len(baselines), name, len(windows),
                 time.perf_counter() - t0)
        bar.update()
    bar.close()
    metrics["oracle_methods"] = [m for m in ORACLE_METHODS if f"{m}.action_ed" in metrics]
    return metrics
