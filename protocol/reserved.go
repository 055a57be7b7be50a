package protocol

import "strings"

// This file holds the built-in list of names that no secret may have,
// because a secret reaches the environment of every kernel of every
// workspace in its scope and, through the kernel, every program the kernel
// starts: a project member who could set one of these in another member's
// kernel could run code there, read its traffic, or send its credentials
// somewhere else.
//
// A deny-list can never be complete (every tool reads variables of its
// own), so it is organised by class, each with the reason that makes the
// whole class dangerous, and matched by exact name, by prefix and by
// suffix, all without regard to case (some tools read both HTTP_PROXY and
// http_proxy). The service adds a policy for shared scopes on top (see
// controlplane.NamePolicy); the agent ignores every name of this list that
// reaches it anyway.

// ReservedClass is one class of reserved names.
type ReservedClass struct {
	// Name is the class, as errors show it.
	Name string
	// Why is what a variable of the class can do to a process.
	Why string
	// Exact, Prefixes and Suffixes are the names of the class, in upper
	// case: a name is in the class when it equals one of Exact, starts with
	// one of Prefixes or ends with one of Suffixes.
	Exact, Prefixes, Suffixes []string
}

// ReservedClasses are the classes of the built-in list, in the order
// Forbidden checks them.
var ReservedClasses = []ReservedClass{
	{
		Name: "shells, terminals and pagers",
		Why:  "a shell, a pager or an editor runs what they name, or reads its start-up files from where they point",
		Exact: []string{"PATH", "HOME", "SHELL", "USER", "LOGNAME", "PWD", "OLDPWD", "IFS", "ENV", "CDPATH", "FPATH",
			"PROMPT_COMMAND", "PS0", "PS1", "PS2", "PS3", "PS4", "SHELLOPTS", "GLOBIGNORE", "FIGNORE", "EXECIGNORE",
			"HISTFILE", "INPUTRC", "ZDOTDIR", "MAIL", "MAILPATH", "MAILCHECK", "SHLVL", "POSIXLY_CORRECT",
			"EDITOR", "VISUAL", "PAGER", "MANPAGER", "MANPATH", "MANOPT", "MANROFFOPT", "MORE", "BROWSER",
			"TMPDIR", "TMP", "TEMP", "TZ", "TZDIR", "DISPLAY", "XAUTHORITY", "WAYLAND_DISPLAY"},
		Prefixes: []string{"BASH_", "ZSH", "LESS", "TERM", "SYSTEMD_", "SUDO_", "DBUS_", "XDG_"},
		Suffixes: []string{"_SHELL", "_EDITOR", "_PAGER", "_ASKPASS"},
	},
	{
		Name: "dynamic loaders and the C library",
		Why:  "the loader and libc load shared objects, charset and locale modules or tunables from where they point",
		Exact: []string{"GCONV_PATH", "GLIBC_TUNABLES", "LOCPATH", "NLSPATH", "LANG", "LANGUAGE", "GETCONF_DIR",
			"HOSTALIASES", "RESOLV_HOST_CONF", "LOCALDOMAIN", "RES_OPTIONS"},
		Prefixes: []string{"LD_", "DYLD_", "MALLOC_", "LC_", "RESOLV_", "NSS_"},
		Suffixes: []string{"_PRELOAD"},
	},
	{
		Name: "compilers and build tools",
		Why:  "a C-extension build, pip install, make or cargo runs the compiler, linker or wrapper they name, with the flags they give",
		Exact: []string{"CC", "CXX", "CPP", "LD", "AR", "AS", "NM", "RANLIB", "STRIP", "OBJCOPY", "OBJDUMP",
			"READELF", "FC", "F77", "F90", "F95", "CUDACXX", "CUDAHOSTCXX", "HIPCXX", "NVCC_CCBIN", "LDSHARED",
			"LDCXXSHARED", "CCSHARED", "LIBS", "MAKE", "MAKEFILES", "MAKELEVEL", "CPATH", "C_INCLUDE_PATH",
			"CPLUS_INCLUDE_PATH", "OBJC_INCLUDE_PATH", "LIBRARY_PATH", "COMPILER_PATH", "GCC_EXEC_PREFIX",
			"DEPENDENCIES_OUTPUT", "SUNPRO_DEPENDENCIES", "CONFIG_SITE", "M4", "YACC", "LEX", "AUTOCONF",
			"AUTOHEADER", "AUTOMAKE", "ACLOCAL", "LIBTOOL", "RUSTC", "RUSTDOC", "RUSTC_LINKER",
			"MACOSX_DEPLOYMENT_TARGET", "GCCGO", "GOROOT", "GOPATH", "GOBIN", "GOPROXY", "GOPRIVATE", "GONOPROXY",
			"GONOSUMDB", "GONOSUMCHECK", "GOSUMDB", "GOINSECURE", "GOTOOLCHAIN", "GOENV", "GOEXPERIMENT",
			"GODEBUG", "GOCACHE", "GOMODCACHE", "GOTMPDIR", "GOOS", "GOARCH", "GOWORK", "GOVCS", "GOAUTH"},
		Prefixes: []string{"CMAKE_", "CCACHE_", "DISTCC_", "PKG_CONFIG", "MESON", "NINJA", "CGO_", "SETUPTOOLS_",
			"DISTUTILS_", "NVCC_", "DEB_", "RUSTC_"},
		Suffixes: []string{"FLAGS", "_WRAPPER"},
	},
	{
		Name: "language runtimes and their option variables",
		Why:  "an interpreter or a virtual machine reads options, start-up code and module paths from them",
		Exact: []string{"CLASSPATH", "MPLCONFIGDIR", "MPLBACKEND", "VIRTUAL_ENV", "OCAMLRUNPARAM", "GI_TYPELIB_PATH",
			"TK_LIBRARY", "KERAS_BACKEND"},
		Prefixes: []string{"PYTHON", "IPYTHON", "JPY_", "JUPYTER", "PERL", "RUBY", "NODE_", "JAVA", "JDK_",
			"MAVEN_", "GRADLE_", "SBT_", "SPARK_", "PYSPARK_", "HADOOP_", "JULIA_", "R_", "LUA_", "TCL", "DOTNET_",
			"COMPLUS_", "CORECLR_", "PHP", "ERL_", "ELIXIR_", "GHC", "MONO_", "QT_", "GTK_", "GDK_", "GIO_",
			"NBSECRETS"},
		Suffixes: []string{"_OPTS", "_OPTIONS", "_ARGS", "_LIBRARY", "_INIT"},
	},
	{
		Name: "package managers",
		Why:  "an install fetches code from the index, registry or channel they name, and runs its build scripts",
		Prefixes: []string{"PIP_", "UV_", "PIPENV_", "POETRY_", "PDM_", "HATCH_", "CONDA", "MAMBA", "NPM_", "YARN_",
			"PNPM_", "BUNDLE_", "GEM_", "CARGO_", "RUSTUP_", "HOMEBREW_", "APT_", "NIX_", "GUIX_", "TWINE_",
			"VCPKG_", "CONAN_", "SPACK_"},
	},
	{
		Name:     "proxies and resolvers",
		Why:      "they send a process's traffic, and the credentials in it, through a host of the setter's choosing",
		Exact:    []string{"NO_GRPC_PROXY"},
		Prefixes: []string{"GRPC_"},
		Suffixes: []string{"_PROXY"},
	},
	{
		Name: "endpoint, certificate and credential-file redirects",
		Why:  "a client sends its requests, and the real credentials with them, to the endpoint they name, trusts the certificates they name, or reads credentials and configuration from a file of the setter's choosing",
		Exact: []string{"SSLKEYLOGFILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "CURL_HOME", "WGETRC", "NETRC",
			"GNUPGHOME", "KUBECONFIG", "CONTAINER_HOST", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE",
			"AWS_CA_BUNDLE", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
			"AWS_WEB_IDENTITY_TOKEN_FILE", "BOTO_CONFIG", "BOTO_PATH", "GOOGLE_APPLICATION_CREDENTIALS",
			"HF_ENDPOINT", "HF_HUB_CACHE", "HF_DATASETS_CACHE", "TRANSFORMERS_CACHE", "HUGGINGFACE_HUB_CACHE",
			"MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "CVS_RSH", "CVSROOT", "HGRCPATH"},
		Prefixes: []string{"SSL_", "OPENSSL_", "SSH_", "GPG_", "KRB5", "DOCKER_", "CONTAINERS_", "PODMAN_",
			"AWS_ENDPOINT_URL", "CLOUDSDK_", "RSYNC_", "GIT_"},
		Suffixes: []string{"_BASE_URL", "_API_BASE", "ENDPOINT", "_ENDPOINT_URL", "_CA_BUNDLE", "_CA_CERTS",
			"_CONFIG", "_CONF", "_CONFIG_FILE", "_CREDENTIALS_FILE", "_RSH", "_PROG", "_COMMAND", "_CMD",
			"_SOCK", "_SOCKET"},
	},
	{
		Name:     "search paths and configuration directories",
		Why:      "a program loads modules, plugins, libraries or configuration from the directories they name",
		Suffixes: []string{"PATH", "_HOME", "_DIR", "_DIRS"},
	},
}

// Forbidden returns why name may not be a secret name because it changes how
// a process behaves, or "" when it may. It compares without regard to case,
// and names the class of the built-in list that reserves it (see
// ReservedClasses for why each class is dangerous).
func Forbidden(name string) string {
	up := strings.ToUpper(name)
	for _, c := range ReservedClasses {
		for _, e := range c.Exact {
			if up == e {
				return "reserved (" + c.Name + ")"
			}
		}
		for _, p := range c.Prefixes {
			if strings.HasPrefix(up, p) {
				return "reserved prefix " + p + " (" + c.Name + ")"
			}
		}
		for _, s := range c.Suffixes {
			if strings.HasSuffix(up, s) {
				return "reserved suffix " + s + " (" + c.Name + ")"
			}
		}
	}
	return ""
}
