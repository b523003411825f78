"""optlayer.implicit (see DESIGN.md section 4)."""
