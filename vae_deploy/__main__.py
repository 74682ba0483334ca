from vae_deploy.cli import main

main()
