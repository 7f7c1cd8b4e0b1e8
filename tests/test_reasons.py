"""Why a result is shown (`visual_reco.reasons`): levels by threshold, every phrasing, and a
translation that reorders the phrases and names the colour in its own words."""

import array
import struct

import numpy as np
from django.utils import translation

from visual_reco.colour import BIN_CENTRES, PALETTE
from visual_reco.reasons import COLOUR_NAMES, colour_label, colour_names, level, reason

LIMITS = {"shape": {"same": 0.8, "similar": 0.6}, "colour": {"same": 0.9, "similar": 0.7}}
# (shape, colour) cosines at each level for LIMITS.
SCORE = {"same": (0.85, 0.95), "similar": (0.7, 0.8), "other": (0.3, 0.4)}


def caption(shape_level, colour_level, colours=("navy",), mode="similar"):
    scores = {}
    if shape_level:
        scores["shape"] = SCORE[shape_level][0]
    if colour_level:
        scores["colour"] = SCORE[colour_level][1]
    return reason(scores, list(colours) if colours else None, mode, thresholds=LIMITS)


def test_levels_follow_the_thresholds(settings):
    assert level("shape", 0.8, LIMITS) == "same"  # a threshold belongs to the level above
    assert level("shape", 0.7999, LIMITS) == "similar"
    assert level("shape", 0.6, LIMITS) == "similar"
    assert level("shape", 0.5999, LIMITS) == "other"
    assert level("colour", 0.85, LIMITS) == "similar"
    assert level("colour", None, LIMITS) is None
    # By default the measured REASON_THRESHOLDS (docs/QUALITY.md); a project may move one.
    assert level("shape", 0.86) == "same" and level("shape", 0.859) == "similar"
    assert level("colour", 0.68) == "similar" and level("colour", 0.679) == "other"
    settings.VISUAL_RECO = {**settings.VISUAL_RECO,
                            "REASON_THRESHOLDS": {"colour": {"same": 0.99, "similar": 0.5}}}
    assert level("colour", 0.95) == "similar" and level("colour", 0.6) == "similar"
    assert level("shape", 0.86) == "same"  # the other aspect keeps its default


def test_shape_leads_in_the_default_and_other_colours_modes():
    for mode in ("similar", "same_style_other_colours", None):
        assert caption("same", "similar", mode=mode) == "same shape, similar colour: navy"
    assert caption("similar", "other", ("red",)) == "similar shape, other colour: red"
    assert caption("other", "same") == "other shape, same colour: navy"
    assert caption("same", "same") == "same shape, same colour: navy"


def test_colour_leads_in_same_colour_mode_and_an_unlike_shape_goes_unsaid():
    assert caption("other", "same", mode="same_colour") == "same colour: navy"
    assert caption("similar", "similar", mode="same_colour") == \
        "similar colour: navy, similar shape"
    assert caption("same", "other", mode="same_colour") == "other colour: navy, same shape"


def test_missing_aspects_and_names():
    # A row without a colour vector, or a blend of colour alone.
    assert caption("similar", None) == "similar shape"
    assert caption("other", None, mode="same_colour") == "other shape"
    assert caption(None, "similar") == "similar colour: navy"
    # A colour score but no stored vector to name (another field's colour, say).
    assert [caption("same", lv, colours=None) for lv in ("same", "similar", "other")] == [
        "same shape, same colour", "same shape, similar colour", "same shape, other colour"]
    assert reason({}, ["navy"], "similar") is None
    assert reason(None, ["navy"], "similar") is None  # not ranked by a blend


def test_a_result_named_like_the_product_is_not_of_another_colour():
    scores = {"shape": 0.7, "colour": 0.3}
    assert reason(scores, ["green"], "similar", source_colours=["green", "white"],
                  thresholds=LIMITS) == "similar shape, similar colour: green"
    assert reason(scores, ["green"], "similar", source_colours=["white", "green"],
                  thresholds=LIMITS) == "similar shape, other colour: green"
    assert reason(scores, ["green"], "similar", thresholds=LIMITS) == \
        "similar shape, other colour: green"


def test_another_colour_name_needs_a_closer_colour_to_be_similar(settings):
    # The demo's white Frankie Sweatshirt under the mint one: colour cosine 0.691, main
    # colours "white" and "teal" (docs/QUALITY.md "Captions: a pale colour next to white").
    frankie = {"shape": 0.93, "colour": 0.691}
    assert reason(frankie, ["white"], "similar", source_colours=["teal"]) == \
        "same shape, other colour: white"
    # The same cosine under a product of the same main name, or with no name to compare.
    assert reason(frankie, ["teal"], "similar", source_colours=["teal"]) == \
        "same shape, similar colour: teal"
    assert reason(frankie, ["white"], "similar") == "same shape, similar colour: white"
    assert reason({**frankie, "colour": 0.71}, ["white"], "similar",
                  source_colours=["teal"]) == "same shape, similar colour: white"
    # Thresholds without the key keep one "similar" threshold for every name.
    assert reason({"colour": 0.75}, ["red"], "similar", source_colours=["navy"],
                  thresholds=LIMITS) == "similar colour: red"
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "REASON_THRESHOLDS": {
        "colour": {"same": 0.86, "similar": 0.68, "similar_other_name": 0.8}}}
    assert reason({"colour": 0.75}, ["red"], "similar", source_colours=["navy"]) == \
        "other colour: red"


def test_every_palette_colour_has_a_translatable_name():
    assert set(COLOUR_NAMES) == set(PALETTE)
    assert colour_label("light blue") == "light blue"
    assert colour_label("chartreuse") == "chartreuse"


def test_colour_names_come_from_the_stored_vector():
    class Row:
        pass

    row = Row()
    green = np.linalg.norm(BIN_CENTRES - np.array([50.0, -45.0, 35.0]), axis=1).argmin()
    vector = np.zeros(len(BIN_CENTRES), dtype=np.float32)
    vector[green] = 1.0
    row.embedding_colour = vector
    assert colour_names(row, "embedding_colour") == ["green"]
    assert colour_names(row, None) is None
    row.embedding_colour = None
    assert colour_names(row, "embedding_colour") is None


def write_mo(path, messages):
    """A GNU .mo catalog of ``messages`` (msgid -> msgstr; "ctx\\x04id" for pgettext)."""
    messages = {"": "Content-Type: text/plain; charset=UTF-8\n", **messages}
    keys = sorted(messages)
    ids = strs = b""
    offsets = []
    for key in keys:
        msgid, msgstr = key.encode(), messages[key].encode()
        offsets.append((len(ids), len(msgid), len(strs), len(msgstr)))
        ids += msgid + b"\0"
        strs += msgstr + b"\0"
    key_start = 7 * 4 + 16 * len(keys)
    value_start = key_start + len(ids)
    table = [n for o1, l1, _, _ in offsets for n in (l1, o1 + key_start)]
    table += [n for _, _, o2, l2 in offsets for n in (l2, o2 + value_start)]
    header = struct.pack("Iiiiiii", 0x950412DE, 0, len(keys), 28, 28 + 8 * len(keys), 0, 0)
    path.parent.mkdir(parents=True)
    path.write_bytes(header + array.array("i", table).tobytes() + ids + strs)


def test_a_translation_may_reorder_the_phrases_and_name_colours(settings, tmp_path):
    write_mo(tmp_path / "xx" / "LC_MESSAGES" / "django.mo", {
        "same shape": "forme identique",
        "similar colour: %(colour)s": "%(colour)s, couleur proche",
        "reason\x04%(first)s, %(second)s": "%(second)s ; %(first)s",
        "colour\x04navy": "marine",
    })
    settings.LOCALE_PATHS = [str(tmp_path)]
    with translation.override("xx"):
        assert caption("same", "similar") == "marine, couleur proche ; forme identique"
        # Untranslated messages fall back to English, placeholders filled all the same.
        assert caption("similar", "other", ("red",)) == "other colour: red ; similar shape"
    assert caption("same", "similar") == "same shape, similar colour: navy"


def test_captions_follow_a_change_of_catalogs(settings, tmp_path):
    # Captions are kept per language; a new catalog must not be served the old ones.
    for n, word in enumerate(("identique", "pareille")):
        write_mo(tmp_path / str(n) / "xx" / "LC_MESSAGES" / "django.mo",
                 {"same shape": f"forme {word}"})
        settings.LOCALE_PATHS = [str(tmp_path / str(n))]
        with translation.override("xx"):
            assert caption("same", None) == f"forme {word}"
