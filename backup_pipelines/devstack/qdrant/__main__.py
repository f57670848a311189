from backup_pipelines.devstack.qdrant.server import main

main()
