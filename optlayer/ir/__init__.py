"""optlayer.ir (see DESIGN.md section 4)."""
