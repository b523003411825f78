"""optlayer.compiler (see DESIGN.md section 4)."""
