"""The Python copy of the format constants matches the C header."""
import re
from pathlib import Path

from ggzip import constants as C

HEADER = Path(__file__).resolve().parent.parent / "native" / "include" / "ggzip.h"


def defines():
    out = {}
    for m in re.finditer(r"#define\s+(GGZ_\w+)\s+(.+?)\s*(?:/\*.*)?$", HEADER.read_text(), re.M):
        out[m.group(1)] = m.group(2)
    return out


def c_int(expr):
    return int(eval(expr.replace("u", "")))  # e.g. "(1u << 16)", "0x315A4747u"


def test_frame_constants_match():
    d = defines()
    assert c_int(d["GGZ_FRAME_MAGIC"]) == C.FRAME_MAGIC
    assert c_int(d["GGZ_FORMAT_VERSION"]) == C.FORMAT_VERSION
    assert c_int(d["GGZ_LANES"]) == C.LANES
    assert c_int(d["GGZ_PROB_BITS"]) == C.PROB_BITS
    assert c_int(d["GGZ_RANS_L"]) == C.RANS_L
    assert c_int(d["GGZ_FRAME_HEADER_SIZE"]) == C.FRAME_HEADER_SIZE
    assert c_int(d["GGZ_DEFAULT_CHUNK"]) == C.DEFAULT_CHUNK
    assert c_int(d["GGZ_MAX_STREAMS"]) == C.MAX_STREAMS


def test_layouts_and_errors_match():
    text = HEADER.read_text()
    layouts = re.findall(r"GGZ_LAYOUT_(\w+)\s*=\s*(\d+)", text)
    assert {name.lower(): int(v) for name, v in layouts} == C.LAYOUT_IDS
    body = re.search(r"typedef enum \{\s*GGZ_OK = 0,(.*?)GGZ_ERR_MAX", text, re.S).group(1)
    errors = ["OK"] + re.findall(r"GGZ_ERR_(\w+)", body)
    assert errors == C.ERRORS
