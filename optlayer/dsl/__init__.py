"""optlayer.dsl (see DESIGN.md section 4)."""
