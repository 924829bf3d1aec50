"""Delivering: results to the PACS with C-STORE until it has them (``dispatcher``), and a
result that replaces an earlier one saying so (``supersede``).
"""
