"""The Gram store: a zarr group of NNGP/NTK blocks written tile by tile, and views of it.

- `GramStore` (gram_store.py): layout, fingerprint, checksums, verify, status; local
  folders or fsspec URLs (s3://...). `VerifiedBlock`: a block read with every tile
  checked against its checksum (`CorruptTile` for a bad one).
- `TilePlan`, `Tile` (plan.py): which tiles a Gram consists of (upper train×train
  tiles, test×train tiles, test self-kernels) and how they are padded.
- `SymmetricGram` (symmetric.py): lazy reads of the full symmetric train×train matrix
  from its upper tiles, and K @ X reading each stored tile once.
"""
from raygram.store.gram_store import GramStore, VerifiedBlock, checksum, describe_difference, fingerprint
from raygram.store.plan import BLOCKS, Tile, TilePlan, balanced_tile_size, fit_tile_size
from raygram.store.symmetric import SymmetricGram

__all__ = [
    "GramStore", "VerifiedBlock", "checksum", "describe_difference", "fingerprint",
    "BLOCKS", "Tile", "TilePlan", "balanced_tile_size", "fit_tile_size",
    "SymmetricGram",
]
