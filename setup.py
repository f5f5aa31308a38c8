from setuptools import find_packages, setup

setup(
    name="keyard",
    version="0.2.0",
    description="A small service registry: services register, heartbeat and look each other up over HTTP.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=find_packages(include=["keyard", "keyard.*"]),
    install_requires=[
        "falcon>=4,<5",
        "gunicorn>=22",
        "python-etcd>=0.4.5",
        "redis>=5",
        "click>=8.1",
    ],
    extras_require={
        "test": ["pytest>=7", "webtest>=3", "ruff", "mypy"],
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
