"""Typed results of the downstream stages: linear probes, kNN and fine-tuning.

Each record has ``to_dict()`` (what metrics.json holds) and ``from_dict()``. Encoders sit under their
own ``encoders`` key, beside the settings, so any label is safe (``layers``, ``seeds``, ``mode``...),
and every encoder keeps its own layer list (a ResNet's stages beside a ViT's blocks).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from selfsup.eval.stats import Gain, SeedStats, compare


@dataclass(frozen=True)
class LayerResult:
    """Linear-probe top-1 of one layer over seeds, with the probe's input size and pooling grid.

    ``top1`` is on the test split (reported only); ``val`` on the validation split (what chooses),
    None when the data has no validation split.
    """

    top1: SeedStats
    dim: int
    grid: int
    val: SeedStats | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {**self.top1.to_dict(), "dim": self.dim, "grid": self.grid}
        if self.val is not None:
            out["val"] = self.val.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerResult:
        val = data.get("val")
        return cls(
            SeedStats.from_dict(data),
            int(data["dim"]),
            int(data["grid"]),
            None if val is None else SeedStats.from_dict(val),
        )


@dataclass(frozen=True)
class EncoderProbe:
    """The probes of one encoder: layer -> result, in the order the layers were probed."""

    layers: dict[str, LayerResult]

    def best_layer(self, among: list[str] | None = None) -> str | None:
        """The layer with the best mean validation top-1 (among ``among``); None without validation."""
        names = list(self.layers) if among is None else among
        if not names or any(self.layers[n].val is None for n in names):
            return None
        return max(names, key=lambda n: self.layers[n].val.mean)  # type: ignore[union-attr]

    def to_dict(self) -> dict[str, Any]:
        return {"layers": {name: result.to_dict() for name, result in self.layers.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderProbe:
        return cls({name: LayerResult.from_dict(r) for name, r in data["layers"].items()})


@dataclass(frozen=True)
class Comparison:
    """Per layer, ``encoder`` against ``baseline`` (the pretrained encoder against its random init).

    The gains are on the test split. ``best_layer`` is ``encoder``'s best layer on the validation
    split, never on test, or None when there is no validation split to choose on.
    """

    encoder: str
    baseline: str
    layers: dict[str, Gain]
    best_layer: str | None

    @property
    def best_gain(self) -> float | None:
        """The test gain at the layer validation chose."""
        return None if self.best_layer is None else self.layers[self.best_layer].gain

    @classmethod
    def of(cls, probe: ProbeResults, encoder: str, baseline: str) -> Comparison:
        """Gains at every layer both encoders were probed on; the best layer is chosen on validation."""
        mine, theirs = probe.encoders[encoder].layers, probe.encoders[baseline].layers
        shared = [layer for layer in mine if layer in theirs]
        if not shared:
            raise ValueError(f"'{encoder}' and '{baseline}' share no probed layer")
        gains = {layer: compare(mine[layer].top1, theirs[layer].top1) for layer in shared}
        return cls(encoder, baseline, gains, probe.encoders[encoder].best_layer(shared))

    def to_dict(self) -> dict[str, Any]:
        return {
            "encoder": self.encoder,
            "baseline": self.baseline,
            "layers": {layer: gain.to_dict() for layer, gain in self.layers.items()},
            "best_layer": self.best_layer,
            "best_gain": self.best_gain,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Comparison:
        gains = {layer: Gain.from_dict(g) for layer, g in data["layers"].items()}
        return cls(data["encoder"], data["baseline"], gains, data.get("best_layer"))


@dataclass(frozen=True)
class ProbeResults:
    """The ``linear_probe`` section: settings, each encoder's probes, and the comparison if one was made.

    ``head`` is the classifier each layer got (``linear``, ``mlp`` or ``conv``; selfsup.eval.probe_heads).
    """

    mode: str
    seeds: tuple[int, ...]
    encoders: dict[str, EncoderProbe] = field(default_factory=dict)
    comparison: Comparison | None = None
    head: str = "linear"

    def has_validation(self) -> bool:
        """Whether every probed layer of every encoder was scored on a validation split."""
        results = [r for e in self.encoders.values() for r in e.layers.values()]
        return bool(results) and all(r.val is not None for r in results)

    def layers(self) -> list[str]:
        """Every probed layer, in order of first appearance over the encoders."""
        return list(dict.fromkeys(layer for e in self.encoders.values() for layer in e.layers))

    def compared(self, encoder: str, baseline: str) -> ProbeResults:
        """These results with :class:`Comparison` of ``encoder`` against ``baseline``."""
        return replace(self, comparison=Comparison.of(self, encoder, baseline))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mode": self.mode,
            "head": self.head,
            "seeds": list(self.seeds),
            "encoders": {label: e.to_dict() for label, e in self.encoders.items()},
        }
        if self.comparison is not None:
            out["comparison"] = self.comparison.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProbeResults:
        comparison = data.get("comparison")
        return cls(
            mode=data["mode"],
            seeds=tuple(data["seeds"]),
            encoders={label: EncoderProbe.from_dict(e) for label, e in data["encoders"].items()},
            comparison=None if comparison is None else Comparison.from_dict(comparison),
            head=data.get("head", "linear"),  # runs written before heads were configurable
        )


@dataclass(frozen=True)
class KnnResults:
    """The ``knn`` section: settings and, per encoder, top-1 for each k.

    ``versus`` names (encoder, baseline) when the run compares two encoders (the main job).
    ``encoders`` is on the test split; ``val`` the same on the validation split (empty without one).
    """

    layer: str
    ks: tuple[int, ...]
    temperature: float
    encoders: dict[str, dict[int, float]] = field(default_factory=dict)
    versus: tuple[str, str] | None = None
    val: dict[str, dict[int, float]] = field(default_factory=dict)

    def gains(self) -> dict[int, float]:
        """Per k, top-1 of ``versus[0]`` minus that of ``versus[1]`` ({} without ``versus``)."""
        if self.versus is None:
            return {}
        mine, theirs = (self.encoders[label] for label in self.versus)
        return {k: round(mine[k] - theirs[k], 2) for k in self.ks}

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "layer": self.layer,
            "ks": list(self.ks),
            "temperature": self.temperature,
            "encoders": {
                label: {
                    **{f"top1_k{k}": top1 for k, top1 in scores.items()},
                    **{f"val_top1_k{k}": top1 for k, top1 in self.val.get(label, {}).items()},
                }
                for label, scores in self.encoders.items()
            },
        }
        if self.versus is not None:
            out["versus"] = list(self.versus)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KnnResults:
        ks = tuple(int(k) for k in data["ks"])
        versus = data.get("versus")
        return cls(
            layer=data["layer"],
            ks=ks,
            temperature=float(data["temperature"]),
            encoders={
                label: {k: scores[f"top1_k{k}"] for k in ks} for label, scores in data["encoders"].items()
            },
            versus=None if versus is None else (versus[0], versus[1]),
            val={
                label: {k: scores[f"val_top1_k{k}"] for k in ks}
                for label, scores in data["encoders"].items()
                if all(f"val_top1_k{k}" in scores for k in ks)
            },
        )


@dataclass(frozen=True)
class EncoderFinetune:
    """One encoder fine-tuned once per seed: top-1 over seeds, and what the first seed's run did.

    ``top1`` is on the test split; ``val`` on the validation split (None without one).
    """

    top1: SeedStats
    frozen_stages: tuple[str, ...]
    stage_lr: dict[str, float | None]
    train_images: int
    steps: int
    time_s: float
    val: SeedStats | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {
            **self.top1.to_dict(),
            "frozen_stages": list(self.frozen_stages),
            "stage_lr": dict(self.stage_lr),
            "train_images": self.train_images,
            "steps": self.steps,
            "time_s": self.time_s,
        }
        if self.val is not None:
            out["val"] = self.val.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderFinetune:
        return cls(
            top1=SeedStats.from_dict(data),
            frozen_stages=tuple(data["frozen_stages"]),
            stage_lr=dict(data["stage_lr"]),
            train_images=int(data["train_images"]),
            steps=int(data["steps"]),
            val=SeedStats.from_dict(data["val"]) if data.get("val") is not None else None,
            time_s=float(data["time_s"]),
        )


@dataclass(frozen=True)
class FinetuneResults:
    """The ``finetune`` section: the settings every encoder was fine-tuned with, and each encoder's result."""

    freeze_until: str | None
    label_fraction: float
    seeds: tuple[int, ...]
    epochs: int | None
    max_steps: int | None
    batch_size: int
    head_lr: float
    encoder_lr: float
    layer_decay: float
    num_classes: int
    image_size: int
    encoders: dict[str, EncoderFinetune] = field(default_factory=dict)

    SETTINGS = (
        "freeze_until", "label_fraction", "seeds", "epochs", "max_steps", "batch_size", "head_lr",
        "encoder_lr", "layer_decay", "num_classes", "image_size",
    )  # fmt: skip

    def settings(self) -> dict[str, Any]:
        """The settings as metrics.json holds them (flat, beside ``encoders``)."""
        return {key: list(v) if isinstance(v := getattr(self, key), tuple) else v for key in self.SETTINGS}

    def to_dict(self) -> dict[str, Any]:
        return {**self.settings(), "encoders": {label: e.to_dict() for label, e in self.encoders.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FinetuneResults:
        settings = {key: data[key] for key in cls.SETTINGS}
        settings["seeds"] = tuple(settings["seeds"])
        encoders = {label: EncoderFinetune.from_dict(e) for label, e in data["encoders"].items()}
        return cls(**settings, encoders=encoders)


@dataclass(frozen=True)
class FrozenEval:
    """What :func:`selfsup.stages.probe.evaluate_frozen` measured: probes, kNN, and how long each part took."""

    num_classes: int
    probe: ProbeResults | None = None
    knn: KnnResults | None = None
    timing: dict[str, float] = field(default_factory=dict)

    def sections(self) -> dict[str, Any]:
        """The metrics.json sections: ``linear_probe``, ``knn`` (those that ran) and ``eval_timing``."""
        out: dict[str, Any] = {}
        if self.probe is not None:
            out["linear_probe"] = self.probe.to_dict()
        if self.knn is not None:
            out["knn"] = self.knn.to_dict()
        out["eval_timing"] = dict(self.timing)
        return out
