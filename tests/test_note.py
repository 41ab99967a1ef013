"""C2SP signed notes: the reference known answer, key strings, and every refusal.

The known answer (``tests/vectors/signed-note/``) is golang.org/x/mod/sumdb/note's
own example; reproducing it byte for byte from its signer key, and accepting it
with its verifier key, is what makes our notes readable by other tools. The
second signature on that text (EnochRoot) is quoted from the same upstream test
file (BSD-3-Clause, see the vector folder's LICENSE): it is a real signature by
a key we do not hold, so it exercises the "ignore unknown keys" rule.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.audit.note import (
    MAX_SIGNATURES,
    NoteError,
    NoteSigner,
    NoteVerifier,
    check_key_name,
    key_id_for,
    verifier_key_for,
)

KNOWN: dict[str, Any] = json.loads(
    (Path(__file__).parent / "vectors" / "signed-note" / "known-answer.json").read_text(
        encoding="utf-8"
    )
)
TEXT: str = KNOWN["text"]
NOTE: str = KNOWN["note"]
PETER_LINE = NOTE[len(TEXT) + 1 :]

# From golang.org/x/mod sumdb/note note_test.go (TestOpen): a second key and
# its signature over the same text.
ENOCH_KEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
ENOCH_LINE = (
    "\u2014 EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+"
    "vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n"
)
DOUBLY_SIGNED = NOTE + ENOCH_LINE

PETER = NoteVerifier.from_verifier_key(KNOWN["verifier_key"])
ENOCH = NoteVerifier.from_verifier_key(ENOCH_KEY)
# One fresh key for the whole module keeps the property tests fast.
FRESH = NoteSigner.generate("agency.example/audit")


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def spec_key_id(name: str, key: bytes) -> str:
    """The key id as the spec writes it, for key strings built in tests."""
    return hashlib.sha256(name.encode() + b"\n" + key).digest()[:4].hex()


def signature_line(name: str, key_id: int, signature: bytes) -> str:
    return f"\u2014 {name} {b64(key_id.to_bytes(4, 'big') + signature)}\n"


class TestKnownAnswer:
    def test_signer_reproduces_the_note_byte_for_byte(self) -> None:
        signer = NoteSigner.from_signer_key(KNOWN["signer_key"])
        assert signer.sign(TEXT) == NOTE

    @pytest.mark.parametrize("note", [NOTE, NOTE.encode("utf-8")], ids=["str", "bytes"])
    def test_verifier_accepts_the_note(self, note: str | bytes) -> None:
        assert PETER.verify(note) == TEXT

    def test_key_strings_round_trip(self) -> None:
        signer = NoteSigner.from_signer_key(KNOWN["signer_key"])
        assert signer.name == "PeterNeumann"
        assert signer.signer_key() == KNOWN["signer_key"]
        assert signer.verifier_key() == KNOWN["verifier_key"]
        assert PETER.verifier_key() == KNOWN["verifier_key"]
        assert signer.verifier() == PETER

    def test_key_id(self) -> None:
        assert PETER.key_id == int(KNOWN["key_id_hex"], 16) == 0xC74F20A3
        assert NoteSigner.from_signer_key(KNOWN["signer_key"]).key_id == PETER.key_id
        # Recomputed independently: SHA-256(name || 0x0A || 0x01 || public key).
        key = base64.b64decode(KNOWN["verifier_key"].split("+", 2)[2])
        assert key[0] == 0x01
        assert len(key) == 33
        assert spec_key_id("PeterNeumann", key) == KNOWN["key_id_hex"]
        assert key_id_for("PeterNeumann", PETER.public_key) == PETER.key_id
        assert verifier_key_for("PeterNeumann", PETER.public_key) == KNOWN["verifier_key"]

    def test_signature_line_shape(self) -> None:
        assert PETER_LINE.startswith("\u2014 PeterNeumann ")
        raw = base64.b64decode(PETER_LINE.split(" ")[2])
        assert raw[:4] == bytes.fromhex(KNOWN["key_id_hex"])
        assert len(raw) == 4 + 64

    def test_unknown_signatures_are_ignored(self) -> None:
        assert PETER.verify(DOUBLY_SIGNED) == TEXT
        assert ENOCH.verify(DOUBLY_SIGNED) == TEXT
        assert ENOCH.verify(TEXT + "\n" + ENOCH_LINE + PETER_LINE) == TEXT

    def test_a_note_by_another_key_only_is_refused(self) -> None:
        with pytest.raises(NoteError, match="no signature by PeterNeumann"):
            PETER.verify(TEXT + "\n" + ENOCH_LINE)


class TestFreshKeys:
    @pytest.mark.parametrize(
        "text",
        [
            "a\n",
            "\n",
            "first\n\nafter a blank line\n",
            "ends in blank lines\n\n\n",
            # The C2SP spec's example text: blank line and non-ASCII inside.
            "Ognuno sta solo sul cuor della terra\ntrafitto da un raggio di sole:\n\n"
            "ed \u00e8 subito sera.\n",
            # Text that looks like a signature block is still just text.
            "x\n\n\u2014 PeterNeumann x08go/ZJ\n",
        ],
    )
    def test_round_trip(self, text: str) -> None:
        note = FRESH.sign(text)
        assert FRESH.verifier().verify(note) == text
        assert FRESH.verifier().verify(note.encode("utf-8")) == text

    def test_key_strings_round_trip(self) -> None:
        signer = NoteSigner.from_signer_key(FRESH.signer_key())
        assert signer.sign("x\n") == FRESH.sign("x\n")  # Ed25519 is deterministic
        verifier = NoteVerifier.from_verifier_key(FRESH.verifier_key())
        assert verifier == FRESH.verifier()
        assert verifier.verifier_key() == FRESH.verifier_key()
        assert FRESH.signer_key().startswith("PRIVATE+KEY+agency.example/audit+")

    def test_key_id_matches_spec_formula(self) -> None:
        key = base64.b64decode(FRESH.verifier_key().split("+", 2)[2])
        assert f"{FRESH.key_id:08x}" == spec_key_id(FRESH.name, key)

    def test_signer_repr_hides_the_key(self) -> None:
        assert "private" not in repr(FRESH).lower()

    def test_same_name_other_key_is_ignored(self) -> None:
        other = NoteSigner.generate(FRESH.name)
        note = other.sign("x\n")
        with pytest.raises(NoteError, match="no signature by"):
            FRESH.verifier().verify(note)
        both = note + FRESH.sign("x\n").split("\n\n", 1)[1]
        assert FRESH.verifier().verify(both) == "x\n"
        assert other.verifier().verify(both) == "x\n"

    def test_same_key_id_other_name_is_ignored(self) -> None:
        signature = FRESH.private_key.sign(b"x\n")
        note = "x\n\n" + signature_line("someone.else", FRESH.key_id, signature)
        with pytest.raises(NoteError, match="no signature by"):
            FRESH.verifier().verify(note)

    def test_our_name_and_id_with_a_forged_signature_is_refused(self) -> None:
        forged = Ed25519PrivateKey.generate().sign(b"x\n")
        note = FRESH.sign("x\n") + signature_line(FRESH.name, FRESH.key_id, forged)
        with pytest.raises(NoteError, match="does not verify"):
            FRESH.verifier().verify(note)

    def test_a_repeated_valid_signature_is_accepted(self) -> None:
        note = FRESH.sign("x\n")
        line = note.split("\n\n", 1)[1]
        assert FRESH.verifier().verify(note + line) == "x\n"

    def test_many_foreign_signatures(self) -> None:
        # The spec requires accepting at least 16; we accept up to 100 lines.
        own = FRESH.sign(TEXT)[len(TEXT) + 1 :]
        for foreign in (16, MAX_SIGNATURES - 1):
            note = TEXT + "\n" + ENOCH_LINE * foreign + own
            assert FRESH.verifier().verify(note) == TEXT
        with pytest.raises(NoteError, match="more than 100"):
            FRESH.verifier().verify(TEXT + "\n" + ENOCH_LINE * MAX_SIGNATURES + own)

    def test_too_many_own_signatures(self) -> None:
        # golang.org/x/mod's TestOpen: 101 copies of a valid signature.
        with pytest.raises(NoteError, match="more than 100"):
            PETER.verify(TEXT + "\n" + PETER_LINE * 101)


class TestSigning:
    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("", "newline"),
            ("abc", "newline"),
            ("a\nb", "newline"),
            ("a\tb\n", "control character"),
            ("a\r\n", "control character"),
            ("\x00\n", "control character"),
            ("\ud800\n", "lone surrogate"),
        ],
    )
    def test_refuses_text_no_note_can_carry(self, text: str, message: str) -> None:
        with pytest.raises(NoteError, match=message):
            FRESH.sign(text)

    def test_signature_line_format(self) -> None:
        note = FRESH.sign("hello\n")
        assert re.fullmatch(r"hello\n\n\u2014 agency\.example/audit [A-Za-z0-9+/]{91}=\n", note)
        raw = base64.b64decode(note.split(" ")[-1])
        assert int.from_bytes(raw[:4], "big") == FRESH.key_id


class TestKeyNames:
    @pytest.mark.parametrize(
        ("name", "message"),
        [
            ("", "empty"),
            ("a+b", "'\\+'"),
            ("a b", "space"),
            ("a\tb", "space"),
            ("a\nb", "space"),
            ("a\u00a0b", "space"),  # no-break space
            ("a\u2003b", "space"),  # em space
            ("a\u3000b", "space"),  # ideographic space
            ("a\x01b", "control"),
            ("a\ud800b", "lone surrogate"),
        ],
    )
    def test_bad_names(self, name: str, message: str) -> None:
        with pytest.raises(NoteError, match=message):
            check_key_name(name)
        with pytest.raises(NoteError, match=message):
            NoteSigner(name=name, private_key=FRESH.private_key)
        with pytest.raises(NoteError, match=message):
            verifier_key_for(name, PETER.public_key)

    @pytest.mark.parametrize(
        "name", ["a", "sum.golang.org", "example.com/log42", "\u00e9t\u00e9", "a-b_c"]
    )
    def test_good_names(self, name: str) -> None:
        check_key_name(name)
        signer = NoteSigner(name=name, private_key=FRESH.private_key)
        assert NoteVerifier.from_verifier_key(signer.verifier_key()).verify(signer.sign("x\n"))


PETER_PUBLIC = base64.b64decode(KNOWN["verifier_key"].split("+", 2)[2])


def noncanonical_34_bytes() -> str:
    """Base64 of 34 bytes with non-zero padding bits (lenient decoders take it)."""
    encoded = b64(PETER_PUBLIC + b"\x00")
    assert encoded.endswith("AA==")
    return encoded[:-3] + "B=="


class TestVerifierKeys:
    @pytest.mark.parametrize(
        ("key", "message"),
        [
            ("", "name\\+keyid\\+key"),
            ("PeterNeumann", "name\\+keyid\\+key"),
            ("PeterNeumann+c74f20a3", "name\\+keyid\\+key"),
            ("+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "empty"),
            ("Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "space"),
            ("Peter\u00a0Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "space"),
            ("PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "hex"),
            ("PeterNeumann+c74f20a+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "hex"),
            ("PeterNeumann+0c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "hex"),
            ("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10T", "base64"),
            ("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq_LDE4izWy10TW", "base64"),
            ("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW\n", "base64"),
            ("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW+", "base64"),
            ("PeterNeumann+c74f20a3+", "key is empty"),
            ("PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "key id"),
            ("PeterNeuman+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "key id"),
        ],
    )
    def test_refused(self, key: str, message: str) -> None:
        with pytest.raises(NoteError, match=message):
            NoteVerifier.from_verifier_key(key)

    @pytest.mark.parametrize(
        ("key", "message"),
        [
            # Key ids adjusted to the mangled key, as in golang.org/x/mod's
            # TestNewVerifier, so only the named defect remains.
            (b"\x02" + PETER_PUBLIC[1:], "key type 0x02"),
            (PETER_PUBLIC + b"BADKEY", "38 bytes"),
            (PETER_PUBLIC[:-1], "31 bytes"),
            (b"\x01", "0 bytes"),
        ],
    )
    def test_refused_with_adjusted_key_id(self, key: bytes, message: str) -> None:
        text = f"PeterNeumann+{spec_key_id('PeterNeumann', key)}+{b64(key)}"
        with pytest.raises(NoteError, match=message):
            NoteVerifier.from_verifier_key(text)

    def test_noncanonical_base64_is_refused(self) -> None:
        with pytest.raises(NoteError, match="canonical"):
            NoteVerifier.from_verifier_key(f"PeterNeumann+c74f20a3+{noncanonical_34_bytes()}")

    def test_every_mangling_is_refused(self) -> None:
        # golang.org/x/mod's TestNewVerifier: every proper substring and every
        # single-byte increment.
        key = KNOWN["verifier_key"]
        for i in range(len(key) + 1):
            for j in range(i + 1, len(key) + 1):
                if (i, j) != (0, len(key)):
                    with pytest.raises(NoteError):
                        NoteVerifier.from_verifier_key(key[i:j])
        for i in range(len(key)):
            with pytest.raises(NoteError):
                NoteVerifier.from_verifier_key(key[:i] + chr(ord(key[i]) + 1) + key[i + 1 :])

    def test_constructor_checks_the_key_id(self) -> None:
        with pytest.raises(NoteError, match="key id c74f20a4 does not match"):
            NoteVerifier(name="PeterNeumann", key_id=0xC74F20A4, public_key=PETER.public_key)
        with pytest.raises(NoteError, match="does not match"):
            NoteVerifier(name="PeterNeumanm", key_id=PETER.key_id, public_key=PETER.public_key)


class TestSignerKeys:
    SEED_B64 = KNOWN["signer_key"].split("+", 4)[4]

    @pytest.mark.parametrize(
        ("key", "message"),
        [
            (KNOWN["verifier_key"], "PRIVATE\\+KEY\\+"),
            ("private+key+" + KNOWN["signer_key"][12:], "PRIVATE\\+KEY\\+"),
            ("PRIVATE+KEY+PeterNeumann+c74f20a4+" + SEED_B64, "does not match"),
            ("PRIVATE+KEY+PeterNeuman+c74f20a3+" + SEED_B64, "does not match"),
            ("PRIVATE+KEY+PeterNeumann+c74f20a3+" + SEED_B64[:-1], "base64"),
            ("PRIVATE+KEY+PeterNeumann+c74f20a3", "name\\+keyid\\+key"),
            ("PRIVATE+KEY+", "name\\+keyid\\+key"),
        ],
    )
    def test_refused(self, key: str, message: str) -> None:
        with pytest.raises(NoteError, match=message):
            NoteSigner.from_signer_key(key)

    def test_wrong_key_type(self) -> None:
        key = b"\x02" + base64.b64decode(self.SEED_B64)[1:]
        with pytest.raises(NoteError, match="key type 0x02"):
            NoteSigner.from_signer_key(f"PRIVATE+KEY+PeterNeumann+c74f20a3+{b64(key)}")

    def test_every_mangling_is_refused(self) -> None:
        # golang.org/x/mod's TestNewSigner.
        key = KNOWN["signer_key"]
        for i in range(len(key) + 1):
            for j in range(i + 1, len(key) + 1):
                if (i, j) != (0, len(key)):
                    with pytest.raises(NoteError):
                        NoteSigner.from_signer_key(key[i:j])
        for i in range(len(key)):
            with pytest.raises(NoteError):
                NoteSigner.from_signer_key(key[:i] + chr(ord(key[i]) + 1) + key[i + 1 :])


def with_signature(encoded: str) -> str:
    """The known text with one PeterNeumann signature line holding ``encoded``."""
    return f"{TEXT}\n\u2014 PeterNeumann {encoded}\n"


PETER_B64 = PETER_LINE.split(" ")[2].rstrip("\n")
PETER_RAW = base64.b64decode(PETER_B64)


class TestMalformedNotes:
    @pytest.mark.parametrize(
        ("note", "message"),
        [
            (TEXT, "no blank line"),
            (TEXT + "\n", "no signature lines"),
            (NOTE[:-1], "does not end in a newline"),
            (NOTE + "\n", "no signature lines"),  # blank line after the signatures
            ("\x01" + NOTE, "control character"),
            (NOTE.replace("\n", "\r\n"), "control character"),
            ("\ud800" + NOTE, "lone surrogate"),
            (b"\xff" + NOTE.encode(), "not valid UTF-8"),
            (b"\xed\xa0\x80" + NOTE.encode(), "not valid UTF-8"),  # encoded surrogate
            (b"\xc0\xaf" + NOTE.encode(), "not valid UTF-8"),  # overlong '/'
            (NOTE + "Unexpected line.\n", "not a signature line"),
            (NOTE.replace("\u2014", "-"), "not a signature line"),
            (NOTE.replace("\u2014 ", "\u2014"), "not a signature line"),
            (NOTE.replace("\u2014", "\u2013"), "not a signature line"),  # en dash
            (f"{TEXT}\n\u2014 PeterNeumann\n", "no signature"),
            (f"{TEXT}\n\u2014 PeterNeumann \n", "no signature"),
            (f"{TEXT}\n\u2014  {PETER_B64}\n", "empty"),
            (with_signature(" " + PETER_B64), "base64"),
            (f"{TEXT}\n\u2014 Peter+Neumann {PETER_B64}\n", "'\\+'"),
            # golang.org/x/mod's TestOpen "Bad Name" case.
            (f"{TEXT}\n\u2014 Bad Name {PETER_B64}\n", "base64"),
            (with_signature(PETER_B64.replace("/", "_")), "base64"),
            (with_signature(PETER_B64.replace("=", "")), "base64"),
            (with_signature(PETER_B64 + "="), "base64"),
            # Same bytes to a lenient decoder: non-zero padding bits.
            (with_signature(PETER_B64[:-2] + "N="), "canonical"),
            (with_signature(b64(PETER_RAW[:4])), "shorter than a key id"),
            (with_signature(b64(PETER_RAW[:-1])), "wrong length"),
            (with_signature(b64(PETER_RAW + b"\x00")), "wrong length"),
            # golang.org/x/mod's TestOpen "Invalid signature" case.
            (with_signature(PETER_B64[:56] + "ABCD" + PETER_B64[56:]), "wrong length"),
            (with_signature(b64(PETER_RAW[:-1] + bytes([PETER_RAW[-1] ^ 1]))), "does not verify"),
            ("i" + NOTE[1:], "does not verify"),  # first byte of text
            (NOTE.replace("problem,", "problem;"), "does not verify"),
            (TEXT + "\n\n" + PETER_LINE, "does not verify"),  # extra blank line
            (TEXT + PETER_LINE, "no blank line"),
            (TEXT + "\n" + PETER_LINE + "\n" + ENOCH_LINE, "no signature by PeterNeumann"),
            (TEXT + "\n" + ENOCH_LINE, "no signature by PeterNeumann"),
        ],
    )
    def test_refused(self, note: str | bytes, message: str) -> None:
        with pytest.raises(NoteError, match=message):
            PETER.verify(note)

    def test_every_own_signature_must_verify(self) -> None:
        # Stricter than golang.org/x/mod, which checks only the first one.
        bad = PETER_B64[:10] + ("A" if PETER_B64[10] != "A" else "B") + PETER_B64[11:]
        note = NOTE + f"\u2014 PeterNeumann {bad}\n"
        with pytest.raises(NoteError, match="does not verify"):
            PETER.verify(note)

    def test_every_single_byte_deletion_is_refused_or_harmless(self) -> None:
        data = DOUBLY_SIGNED.encode("utf-8")
        foreign = data.index(ENOCH_LINE.encode("utf-8"))
        for i in range(len(data)):
            try:
                text = PETER.verify(data[:i] + data[i + 1 :])
            except NoteError:
                continue
            assert text == TEXT
            assert foreign <= i < len(data) - 1


DOUBLY_SIGNED_BYTES = DOUBLY_SIGNED.encode("utf-8")
FOREIGN_START = DOUBLY_SIGNED_BYTES.index(ENOCH_LINE.encode("utf-8"))


@settings(max_examples=400, deadline=None)
@given(
    index=st.integers(min_value=0, max_value=len(DOUBLY_SIGNED_BYTES) - 1),
    value=st.integers(min_value=0, max_value=255),
)
def test_single_byte_change_never_yields_a_wrong_text(index: int, value: int) -> None:
    """Any one-byte change is refused, or touched only the foreign signature line."""
    data = bytearray(DOUBLY_SIGNED_BYTES)
    changed = data[index] != value
    data[index] = value
    try:
        text = PETER.verify(bytes(data))
    except NoteError:
        assert changed
        return
    assert text == TEXT
    assert not changed or index >= FOREIGN_START


def test_foreign_line_changes_can_be_harmless() -> None:
    """The property above has both outcomes: a changed foreign signature still passes."""
    line = ENOCH_LINE.replace("vAF1", "vAF2")  # signature bytes, not the key id
    assert PETER.verify(NOTE + line) == TEXT
    with pytest.raises(NoteError, match="does not verify"):
        ENOCH.verify(NOTE + line)


NOTE_CHARS = st.characters(codec="utf-8", exclude_characters="\n").filter(lambda ch: ch >= " ")


@settings(max_examples=100, deadline=None)
@given(lines=st.lists(st.text(NOTE_CHARS, max_size=20), min_size=1, max_size=6))
def test_any_note_text_round_trips(lines: list[str]) -> None:
    text = "\n".join(lines) + "\n"
    assert FRESH.verifier().verify(FRESH.sign(text)) == text


@settings(max_examples=300, deadline=None)
@given(data=st.one_of(st.binary(max_size=300), st.text(max_size=300)))
def test_arbitrary_input_raises_only_note_error(data: str | bytes) -> None:
    with pytest.raises(NoteError):
        PETER.verify(data)


@settings(max_examples=200, deadline=None)
@given(key=st.text(max_size=100))
def test_arbitrary_key_strings_raise_only_note_error(key: str) -> None:
    with pytest.raises(NoteError):
        NoteVerifier.from_verifier_key(key)
    with pytest.raises(NoteError):
        NoteSigner.from_signer_key(key)
