"""Block Kit for every Aegis message: kit (the pieces, limits, action ids), incident, backup, modals."""
