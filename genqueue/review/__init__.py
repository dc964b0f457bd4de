"""Review of generated outputs: the policy that decides what needs a person, and the one module
(`state`) through which every review transition goes."""
