FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

COPY requirements.txt ./
RUN pip install -r requirements.txt

COPY manage.py ./
COPY couponsite ./couponsite
COPY coupons ./coupons

# Admin and Swagger UI assets, served by whitenoise.
RUN DATABASE_URL=sqlite:////tmp/collectstatic.sqlite3 python manage.py collectstatic --noinput

RUN useradd --system --no-create-home coupons
USER coupons

ENV WEB_BIND=0.0.0.0:8000
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2)"

# The web server (couponsite/serve.py: granian), as `make run` starts it.
CMD ["sh", "-c", "python manage.py migrate --noinput && exec python -m couponsite.serve"]
