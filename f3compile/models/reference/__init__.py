"""The moving-shapes domain: synthetic clips with measurable attributes, for reference models."""

from .domain import COLORS, DIRECTIONS, SHAPES, Labels, caption, make_clips, render_clip, write_prompts_jsonl

__all__ = ["COLORS", "DIRECTIONS", "SHAPES", "Labels", "caption", "make_clips", "render_clip", "write_prompts_jsonl"]
