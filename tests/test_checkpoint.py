"""C2SP tlog-checkpoint bodies: exact format, strict parsing, signed round trips.

Two checkpoints from outside the project are quoted: the tlog-checkpoint
spec's example body (its signature is by a key the spec does not publish, so
only the body is used), and a tree head signed by sum.golang.org, verified
with the key built into the go command. The latter shows that our verifier
opens a real third-party checkpoint whose origin is not a URL and differs
from its key name.
"""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.audit.checkpoint import (
    MAX_TREE_SIZE,
    Checkpoint,
    CheckpointError,
    open_checkpoint,
    sign_checkpoint,
)
from gateway.audit.note import NoteError, NoteSigner, NoteVerifier

# https://c2sp.org/tlog-checkpoint, the example's note text.
SPEC_BODY = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
SPEC_ROOT = base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")

SUMDB_KEY = "sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8"
SUMDB_NOTE = (
    "go.sum database tree\n63512409\nF7eHRPqN/cqPtqti14NKdGGaI1Giw8coWP3KxihFZbg=\n\n"
    "\u2014 sum.golang.org Az3gri1OBHKT87Xj8UXU8zjoHGy/X+7Nl94f8TZkELVaasolmGApUsWqwVG9"
    "vE6hgqYb/ph/w2vdkLIVRH7bMB/FPQ4=\n"
)

ORIGIN = "agency.example/audit"
SIGNER = NoteSigner.generate(ORIGIN)
VERIFIER = SIGNER.verifier()
ROOT = bytes(range(32))
ROOT_B64 = base64.b64encode(ROOT).decode("ascii")


class TestFormat:
    def test_spec_example_body(self) -> None:
        checkpoint = Checkpoint("example.com/behind-the-sofa", 20852163, SPEC_ROOT)
        assert checkpoint.body() == SPEC_BODY
        assert Checkpoint.parse(SPEC_BODY) == checkpoint

    def test_extension_lines(self) -> None:
        checkpoint = Checkpoint(ORIGIN, 7, ROOT, ("ext one", "\u2014 two"))
        body = checkpoint.body()
        assert body == f"{ORIGIN}\n7\n{ROOT_B64}\next one\n\u2014 two\n"
        assert Checkpoint.parse(body) == checkpoint

    @pytest.mark.parametrize("size", [0, 1, 10, MAX_TREE_SIZE])
    def test_sizes(self, size: int) -> None:
        checkpoint = Checkpoint(ORIGIN, size, ROOT)
        assert checkpoint.body().split("\n")[1] == str(size)
        assert Checkpoint.parse(checkpoint.body()).size == size

    def test_origin_need_not_be_a_url(self) -> None:
        # The spec only recommends a URL; clients must not assume one.
        checkpoint = Checkpoint("go.sum database tree", 1, ROOT)
        assert Checkpoint.parse(checkpoint.body()) == checkpoint


def body(*lines: str) -> str:
    return "".join(f"{line}\n" for line in lines)


class TestParseStrictness:
    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("", "newline"),
            (SPEC_BODY[:-1], "newline"),
            (body(ORIGIN, "1"), "fewer than three"),
            (body(ORIGIN), "fewer than three"),
            ("\n", "fewer than three"),
            (body("", "1", ROOT_B64), "origin is empty"),
            (body(ORIGIN, "", ROOT_B64), "size"),
            (body(ORIGIN, "01", ROOT_B64), "leading zeros"),
            (body(ORIGIN, "00", ROOT_B64), "leading zeros"),
            (body(ORIGIN, "-1", ROOT_B64), "size"),
            (body(ORIGIN, "+1", ROOT_B64), "size"),
            (body(ORIGIN, " 1", ROOT_B64), "size"),
            (body(ORIGIN, "1 ", ROOT_B64), "size"),
            (body(ORIGIN, "1_000", ROOT_B64), "size"),
            (body(ORIGIN, "0x10", ROOT_B64), "size"),
            (body(ORIGIN, "1e3", ROOT_B64), "size"),
            (body(ORIGIN, "\u0661", ROOT_B64), "size"),  # Arabic-Indic digit one
            (body(ORIGIN, "\uff11", ROOT_B64), "size"),  # fullwidth digit one
            (body(ORIGIN, str(MAX_TREE_SIZE + 1), ROOT_B64), "unsigned 64-bit"),
            (body(ORIGIN, "9" * 21, ROOT_B64), "size"),
            (body(ORIGIN, "1", ""), "0 bytes"),
            (body(ORIGIN, "1", ROOT_B64.rstrip("=")), "base64"),
            (body(ORIGIN, "1", ROOT_B64 + "="), "base64"),
            (body(ORIGIN, "1", " " + ROOT_B64), "base64"),
            (body(ORIGIN, "1", ROOT_B64[:5] + "_" + ROOT_B64[6:]), "base64"),
            (body(ORIGIN, "1", base64.urlsafe_b64encode(b"\xff" * 32).decode()), "base64"),
            (body(ORIGIN, "1", ROOT_B64[:-2] + "9="), "canonical"),  # non-zero padding bits
            (body(ORIGIN, "1", base64.b64encode(ROOT[:31]).decode()), "31 bytes"),
            (body(ORIGIN, "1", base64.b64encode(ROOT + b"\x00").decode()), "33 bytes"),
            (body(ORIGIN, "1", ROOT.hex()), "48 bytes"),  # hex digits are base64 too
            (body(ORIGIN, "1", ROOT_B64, ""), "line 4 is empty"),
            (body(ORIGIN, "1", ROOT_B64, "ext", ""), "line 5 is empty"),
            (body(ORIGIN, "1", ROOT_B64) + "\n", "line 4 is empty"),
            (body(ORIGIN + "\r", "1", ROOT_B64), "control character"),
            (body(ORIGIN, "1", ROOT_B64, "a\tb"), "control character"),
            (body("\ud800", "1", ROOT_B64), "UTF-8"),
            (SPEC_BODY.replace("\n", "\r\n"), "size"),
        ],
    )
    def test_refused(self, text: str, message: str) -> None:
        with pytest.raises(CheckpointError, match=message):
            Checkpoint.parse(text)

    def test_root_noncanonical_case_is_real(self) -> None:
        # A lenient decoder reads the mangled root above as the same 32 bytes.
        mangled = ROOT_B64[:-2] + "9="
        assert ROOT_B64.endswith("8=")
        assert base64.b64decode(mangled) == ROOT


class TestConstruction:
    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"origin": ""}, "origin is empty"),
            ({"origin": "a\nb"}, "control character"),
            ({"origin": "\ud800"}, "UTF-8"),
            ({"origin": b"origin"}, "not a string"),
            ({"size": -1}, "unsigned 64-bit"),
            ({"size": MAX_TREE_SIZE + 1}, "unsigned 64-bit"),
            ({"size": True}, "not an integer"),
            ({"size": 1.0}, "not an integer"),
            ({"size": "1"}, "not an integer"),
            ({"root": ROOT[:31]}, "32 bytes"),
            ({"root": ROOT + b"\x00"}, "32 bytes"),
            ({"root": bytearray(ROOT)}, "32 bytes"),
            ({"root": ROOT_B64}, "32 bytes"),
            ({"extensions": ["ext"]}, "tuple"),
            ({"extensions": ("",)}, "extension line is empty"),
            ({"extensions": ("a\nb",)}, "control character"),
        ],
    )
    def test_refused(self, kwargs: dict[str, object], message: str) -> None:
        fields: dict[str, object] = {"origin": ORIGIN, "size": 1, "root": ROOT}
        fields.update(kwargs)
        with pytest.raises(CheckpointError, match=message):
            Checkpoint(**fields)  # type: ignore[arg-type]


LINE = st.text(
    st.characters(codec="utf-8").filter(lambda ch: ch >= " "),
    min_size=1,
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(
    origin=LINE,
    size=st.integers(min_value=0, max_value=MAX_TREE_SIZE),
    root=st.binary(min_size=32, max_size=32),
    extensions=st.lists(LINE, max_size=3).map(tuple),
)
def test_body_round_trips(origin: str, size: int, root: bytes, extensions: tuple[str, ...]) -> None:
    checkpoint = Checkpoint(origin, size, root, extensions)
    assert Checkpoint.parse(checkpoint.body()) == checkpoint


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=200))
def test_arbitrary_text_raises_only_checkpoint_error(text: str) -> None:
    try:
        checkpoint = Checkpoint.parse(text)
    except CheckpointError:
        return
    assert checkpoint.body() == text  # anything accepted has exactly this spelling


class TestSigned:
    def test_round_trip(self) -> None:
        checkpoint = Checkpoint(ORIGIN, 42, ROOT)
        note = sign_checkpoint(SIGNER, checkpoint)
        assert note == SIGNER.sign(checkpoint.body())
        assert note.startswith(checkpoint.body() + "\n\u2014 agency.example/audit ")
        assert open_checkpoint(VERIFIER, note, ORIGIN) == checkpoint
        assert open_checkpoint(VERIFIER, note.encode("utf-8"), ORIGIN) == checkpoint

    def test_round_trip_with_extensions(self) -> None:
        checkpoint = Checkpoint(ORIGIN, 0, bytes(32), ("witness hint",))
        assert open_checkpoint(VERIFIER, sign_checkpoint(SIGNER, checkpoint), ORIGIN) == checkpoint

    def test_sum_golang_org_checkpoint(self) -> None:
        verifier = NoteVerifier.from_verifier_key(SUMDB_KEY)
        checkpoint = open_checkpoint(verifier, SUMDB_NOTE, "go.sum database tree")
        assert checkpoint.size == 63512409
        assert checkpoint.root == base64.b64decode("F7eHRPqN/cqPtqti14NKdGGaI1Giw8coWP3KxihFZbg=")
        assert checkpoint.extensions == ()
        # Our own signature added next to sum.golang.org's does not disturb it.
        cosigned = SUMDB_NOTE + SIGNER.sign(checkpoint.body()).split("\n\n", 1)[1]
        assert open_checkpoint(verifier, cosigned, "go.sum database tree") == checkpoint
        assert open_checkpoint(VERIFIER, cosigned, "go.sum database tree") == checkpoint

    def test_the_key_name_is_not_the_origin(self) -> None:
        verifier = NoteVerifier.from_verifier_key(SUMDB_KEY)
        with pytest.raises(CheckpointError, match=r"not the expected 'sum\.golang\.org'"):
            open_checkpoint(verifier, SUMDB_NOTE, "sum.golang.org")

    def test_wrong_origin(self) -> None:
        note = sign_checkpoint(SIGNER, Checkpoint("other.example/log", 1, ROOT))
        with pytest.raises(
            CheckpointError, match=r"origin 'other\.example/log' is not the expected"
        ):
            open_checkpoint(VERIFIER, note, ORIGIN)

    def test_wrong_key(self) -> None:
        note = sign_checkpoint(NoteSigner.generate(ORIGIN), Checkpoint(ORIGIN, 1, ROOT))
        with pytest.raises(NoteError, match="no signature by"):
            open_checkpoint(VERIFIER, note, ORIGIN)

    def test_tampered_size(self) -> None:
        note = sign_checkpoint(SIGNER, Checkpoint(ORIGIN, 41, ROOT))
        with pytest.raises(NoteError, match="does not verify"):
            open_checkpoint(VERIFIER, note.replace("\n41\n", "\n42\n"), ORIGIN)

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("just a note\n", "fewer than three"),
            (f"{ORIGIN}\n1\n{ROOT_B64}\n\nafter a blank line\n", "line 4 is empty"),
            (f"{ORIGIN}\n01\n{ROOT_B64}\n", "leading zeros"),
        ],
    )
    def test_signed_text_that_is_not_a_checkpoint(self, text: str, message: str) -> None:
        with pytest.raises(CheckpointError, match=message):
            open_checkpoint(VERIFIER, SIGNER.sign(text), ORIGIN)
