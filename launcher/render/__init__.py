"""JobSpec → Kubernetes objects (Jinja2 templates in k8s_templates/), and the checks every
rendered manifest passes before it is printed or submitted."""
