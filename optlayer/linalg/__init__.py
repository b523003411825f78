"""optlayer.linalg (see DESIGN.md section 4)."""
