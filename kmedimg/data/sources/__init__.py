"""Importers, one per source format; each yields `Item`s and `Rejected`s."""

from kmedimg.data.sources.base import Item, Rejected, Source
