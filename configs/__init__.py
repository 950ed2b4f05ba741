"""Importable run configs (``from configs import m2d``): each module's ``get_config(arg=None)``
returns an ``ml_collections.ConfigDict``; ``--config configs/NAME.py[:ARG]`` loads one by path."""
