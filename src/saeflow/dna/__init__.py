"""DNA language models' side: genomes, motifs, catalogs, recovery and mechanistic evidence."""
