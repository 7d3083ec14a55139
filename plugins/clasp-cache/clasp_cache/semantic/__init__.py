"""The semantic layer of clasp-cache (see the README): a hit for a reworded question, never a wrong one."""
