"""Class mapping: space-classy (Mahlke 2022) and Bus-DeMeo labels -> Roh et al. 2022's seven classes -> complexes.

Seven classes (Roh et al. 2022): C, D, K, L, S, V, X.

=========  =======================================================================================
class      labels mapped to it (Mahlke ``class_``; Bus-DeMeo ``class_previous``)
=========  =======================================================================================
C          B, C, Cb, Cg, Cgh, Ch  (the Bus-DeMeo C-complex)
D          D, Ds, T, Z            (red featureless; Mahlke's Z is an extreme-red D, T sits between D and X)
K          K, Kl
L          L, Ld
S          S, Sa, Sk, Sl, Sq, Sqw, Sr, Srw, Sv, Svw, Sw, A, O, Q, Qw, R
           (S-complex plus the olivine/pyroxene end members that share its 1-um band)
V          V, Vw
X          X, Xc, Xe, Xk, Xn, E, M, P and Mahlke's Ee, Ek, Eek, Me, Mek, Mk, Pe, Xek, Xk
           (albedo splits X into E/M/P; colours alone cannot, so they are one class)
=========  =======================================================================================

Complexes (the level of the 90 % target): C, S, X, V, D with K and L folded into S (in visible/near-IR
colours both are S-like: moderate slope, shallow 1-um band). Ambiguous literature labels (``SD``, ``DCX``,
``FCU`` ...) and ``J`` are left unmapped (None) and are not used for training or scoring.
"""
from __future__ import annotations

SEVEN_CLASSES = ("C", "D", "K", "L", "S", "V", "X")
COMPLEXES = ("C", "D", "S", "V", "X")

_TO_SEVEN = {
    "C": ["B", "C", "Cb", "Cg", "Cgh", "Ch"],
    "D": ["D", "Ds", "T", "Z"],
    "K": ["K", "Kl"],
    "L": ["L", "Ld"],
    "S": ["S", "Sa", "Sk", "Sl", "Sq", "Sqw", "Sr", "Srw", "Sv", "Svw", "Sw", "A", "O", "Q", "Qw", "R"],
    "V": ["V", "Vw"],
    "X": ["X", "Xc", "Xe", "Xk", "Xn", "E", "M", "P", "Ee", "Ek", "Eek", "Me", "Mek", "Mk", "Pe", "Xek"],
}
LABEL_TO_SEVEN = {lab: cls for cls, labs in _TO_SEVEN.items() for lab in labs}
SEVEN_TO_COMPLEX = {"C": "C", "D": "D", "K": "S", "L": "S", "S": "S", "V": "V", "X": "X"}


def to_seven(label) -> str | None:
    """A literature or classy label -> one of SEVEN_CLASSES, or None when the label is ambiguous/unknown."""
    if label is None or not isinstance(label, str):
        return None
    return LABEL_TO_SEVEN.get(label.strip())


def to_complex(label) -> str | None:
    """A label (seven-class or literature) -> one of COMPLEXES, or None."""
    if label is None or not isinstance(label, str):
        return None
    seven = label if label in SEVEN_TO_COMPLEX else to_seven(label)
    return SEVEN_TO_COMPLEX.get(seven) if seven else None
