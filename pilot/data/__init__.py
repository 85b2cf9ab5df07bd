"""Data sets: procedural shapes, paired image folders, rendered scenes."""
