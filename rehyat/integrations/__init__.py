"""Thin adapters from real model implementations (ComfyUI, diffusers) to the ReHyAt core."""
