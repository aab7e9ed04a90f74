"""The project's files on disk: where they are (`paths`: the checkout, the shared data, generated data, the
cache), how they are written so that a killed run never leaves half a file (`atomic`), output folders that
fail before the work rather than after it (`outputs`), and the CSV logs and PNG curves people read (`logs`).
The ground floor of the library: every other group writes through these, and they import no other group."""
