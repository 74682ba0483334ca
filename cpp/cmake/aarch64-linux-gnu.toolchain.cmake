# Cross-compiling for 64-bit ARM Linux (Raspberry Pi 4/5 OS 64-bit, Jetson, Graviton...) from
# an x86-64 Debian/Ubuntu host with its cross compiler (apt-get install g++-aarch64-linux-gnu):
#
#   cmake -S cpp -B cpp/build-aarch64 \
#     -DCMAKE_TOOLCHAIN_FILE=cpp/cmake/aarch64-linux-gnu.toolchain.cmake \
#     -DONNXRUNTIME_ROOT=/path/to/onnxruntime-linux-aarch64-<version>
#
# ONNXRUNTIME_ROOT is searched outside the sysroot (see CMakeLists.txt), so an unpacked
# release archive for aarch64 anywhere on the host works.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(CROSS_PREFIX aarch64-linux-gnu- CACHE STRING "Prefix of the cross tools")
set(CMAKE_C_COMPILER ${CROSS_PREFIX}gcc)
set(CMAKE_CXX_COMPILER ${CROSS_PREFIX}g++)

# Libraries and headers of the target come from the sysroot (if one is set), programs from
# the host.
if(DEFINED ENV{SYSROOT})
  set(CMAKE_SYSROOT $ENV{SYSROOT})
endif()
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
