"""The one place that names and colours a report row.

Every table, figure, legend and PDF of a report takes a row's display name and its
colour from here, so the same row reads and looks the same everywhere:

* :func:`feature_name` / :func:`name_of`: ``"lite0-gap [random-init] + svm (folds-subset)"``.
  The tags come from :func:`bench.aggregate.feature_display` (also used by the CLI's
  leaderboard); a name is never shortened here. Writers that lack room wrap it, or
  abbreviate it through a printed key, never silently.
* :class:`Palette`: one colour per feature family and one per end-to-end model (shades
  of the end-to-end family's colour, assigned once per run in name order), so the
  scratch CNN has the same colour in the bar chart, the cost plot, the learning curves
  and the fine-tuning curves.
* :func:`variant_words`: what a variant tag means, for legends and captions.
"""
from __future__ import annotations

import colorsys
import re

import seaborn as sns
from matplotlib.colors import to_hex, to_rgb

from ..aggregate import FAMILY_ORDER, feature_display, is_random_init
from ..records import RANDOM_INIT_TAG

RANDOM_TAG = RANDOM_INIT_TAG
FAMILY_TITLES = {"handcrafted": "hand-crafted", "deep": "deep (frozen CNN)", "hybrid": "hybrid",
                 "cnn": "end-to-end CNN"}
_PALETTE = sns.color_palette("colorblind", 10)
FAMILY_COLORS = {"handcrafted": _PALETTE[0], "deep": _PALETTE[1], "hybrid": _PALETTE[2], "cnn": _PALETTE[4]}
OTHER_COLOR = _PALETTE[7]
VARIANT_WORDS = {"random-split": "random split that ignores groups (near-duplicate patches may sit in "
                                 "train and test: leaky, optimistic)",
                 "folds-subset": "trained and tested on some folds only (not comparable with full rows)"}


def css_token(text) -> str:
    return re.sub(r"[^a-z0-9-]", "-", str(text).lower())


def family_title(family) -> str:
    return FAMILY_TITLES.get(family, str(family))


def _variant_suffix(variant) -> str:
    suffix = f" ({variant})" if variant else ""
    return suffix


def feature_name(feature, weights=None, variant=None) -> str:
    """A feature's display name with its weights tag and, for a variant row, the variant."""
    return feature_display(feature, weights) + _variant_suffix(variant)


def row_name(feature, classifier, weights=None, variant=None) -> str:
    """``<feature> [tags] + <classifier> (<variant>)``: the name of a row everywhere
    (the same text as the CLI's :func:`bench.aggregate.row_label`)."""
    return f"{feature_display(feature, weights)} + {classifier}" + _variant_suffix(variant)


def name_of(row) -> str:
    """The display name of a summary row (a pandas Series / mapping or a namedtuple)."""
    get = row.get if hasattr(row, "get") else (lambda k, d=None: getattr(row, k, d))
    return row_name(get("feature"), get("classifier"), get("weights"), get("variant") or None)


def model_of(feature) -> str:
    """The end-to-end model a CNN row belongs to (its label, without tags): the name of its
    ``finetune/<model>/`` folder."""
    return str(feature).replace(f" {RANDOM_TAG}", "").replace(RANDOM_TAG, "").strip()


def variant_words(variant) -> str:
    return VARIANT_WORDS.get(variant, str(variant))


def weights_words(weights) -> str:
    """``random-init (NOT pretrained)``, ``imagenet``, ``file …`` or ``n/a``."""
    if is_random_init(weights):
        return "random-init (NOT pretrained)"
    return str(weights) if weights else "n/a"


def _shade(rgb, k: int):
    """The k-th shade of a colour: 0 is the colour itself, then alternately darker and lighter."""
    if k == 0:
        return tuple(rgb)
    h, light, s = colorsys.rgb_to_hls(*rgb)
    step = (k + 1) // 2 * 0.16
    light = light - step if k % 2 else light + step
    return colorsys.hls_to_rgb(h, min(0.85, max(0.18, light)), s)


class Palette:
    """Colours of one report: families and end-to-end models.

    ``models``: the run's end-to-end model labels (tags stripped by :func:`model_of`); each
    gets a shade of the end-to-end family's colour, in sorted order, so the colour of a
    model depends only on the set of models in the run.
    """

    def __init__(self, models=()):
        self.models = sorted({model_of(m) for m in models if m is not None})
        base = to_rgb(FAMILY_COLORS["cnn"])
        self.model_colors = {m: _shade(base, i) for i, m in enumerate(self.models)}

    @classmethod
    def of_summary(cls, summary, extra_models=()) -> "Palette":
        models = list(extra_models)
        if summary is not None and len(summary):
            models += list(summary.loc[summary["family"] == "cnn", "feature"])
        return cls(models)

    def family(self, family):
        return FAMILY_COLORS.get(family, OTHER_COLOR)

    def model(self, model):
        return self.model_colors.get(model_of(model), FAMILY_COLORS["cnn"])

    def row(self, family, feature=None):
        """A row's colour: its model's for an end-to-end row, its family's otherwise."""
        if family == "cnn" and feature is not None:
            return self.model(feature)
        return self.family(family)

    def css(self) -> dict[str, str]:
        """``{css token: hex}`` of every family (and ``other``) for the HTML."""
        out = {css_token(f): to_hex(c) for f, c in FAMILY_COLORS.items()}
        out["other"] = to_hex(OTHER_COLOR)
        return out


def present_families(values) -> list[str]:
    fams = list(dict.fromkeys(values))
    return [f for f in FAMILY_ORDER if f in fams] + [f for f in fams if f not in FAMILY_ORDER]


__all__ = ["FAMILY_TITLES", "FAMILY_COLORS", "OTHER_COLOR", "RANDOM_TAG", "Palette", "css_token",
           "family_title",
           "feature_name", "row_name", "name_of", "model_of", "variant_words", "weights_words",
           "present_families", "is_random_init"]
