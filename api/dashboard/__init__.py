"""The web dashboard: one static page (no build step) over the live feed and the JSON reads."""
