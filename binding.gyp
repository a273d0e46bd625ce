{
  "targets": [
    {
      "target_name": "fsx",
      "sources": ["src/native/fsx.c", "src/native/reply-send.c"],
      "cflags": ["-O2", "-Wall"]
    }
  ]
}
