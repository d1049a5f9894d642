"""Prices an SPU: value, interval, haircut, pledge price and admission."""
