"""Files: saving and loading perforated models, atomic writes, integrity checks, rebuild
and export."""
