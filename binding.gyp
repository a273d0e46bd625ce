{
  "targets": [
    {
      "target_name": "fsx",
      "sources": ["src/native/fsx.c", "src/native/backup.c", "src/native/crc32.c", "src/native/read-crc.c", "src/native/commit.c"],
      "cflags": ["-O2", "-Wall"]
    }
  ]
}
