"""Examples of your own Faust agents beside the enrichment agent (docs/sources.md)."""
