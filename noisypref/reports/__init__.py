"""Result files in, tables, plots and statistics out. Never imports torch."""
