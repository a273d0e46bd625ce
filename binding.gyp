{
  "targets": [
    {
      "target_name": "fsx",
      "sources": ["src/native/fsx.c", "src/native/backup.c"],
      "cflags": ["-O2", "-Wall"]
    }
  ]
}
