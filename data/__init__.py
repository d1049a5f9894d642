"""Reads, checks and stores the tables of the book: SPUs, reviews, orders, market snapshots, positions."""

from data.demo import DemoCatalog, generate_demo_catalog
from data.loaders import DataFileError, LoadResult, Problem, load_catalog, load_table
from data.market import derive_market
from data.myntra import MyntraCatalog, read_myntra
from data.online_retail import OnlineRetail, read_online_retail
from data.schemas import TABLES, TableSchema
from data.store import Store

__all__ = [
    "TABLES", "DataFileError", "DemoCatalog", "LoadResult", "MyntraCatalog", "OnlineRetail", "Problem", "Store", "TableSchema",
    "derive_market", "generate_demo_catalog", "load_catalog", "load_table", "read_myntra", "read_online_retail",
]
