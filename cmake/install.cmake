# Installs headers, libattn.so + libattn.a, the attn tool, a CMake package (find_package(attn) ->
# attn::attn, attn::attn_static, and attn::attn_cuda where libattn_cuda is built) and a pkg-config file (attn.pc).
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

# The installed libattn.so and attn find OpenBLAS's OpenMP build outside the default library path.
set_target_properties(attn_shared PROPERTIES INSTALL_RPATH_USE_LINK_PATH ON)
if(ATTN_BUILD_TOOL)  # the library alone (-DATTN_BUILD_TOOL=OFF) installs all but the tool
  set_target_properties(attn PROPERTIES INSTALL_RPATH_USE_LINK_PATH ON)
  install(TARGETS attn RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
endif()

# attn/dist (MPI) stays in the build tree: attn_dist is not installed
# attn/cuda.h and attn/cuda_c.h only with libattn_cuda behind them
set(ATTN_CUDA_HEADERS_EXCLUDED)
if(NOT ATTN_WITH_CUDA)
  set(ATTN_CUDA_HEADERS_EXCLUDED PATTERN cuda.h EXCLUDE PATTERN cuda_c.h EXCLUDE)
endif()
install(DIRECTORY include/attn DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} FILES_MATCHING PATTERN "*.h" PATTERN dist EXCLUDE
        ${ATTN_CUDA_HEADERS_EXCLUDED})
install(FILES ${PROJECT_BINARY_DIR}/include/attn/version.h DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/attn)
install(TARGETS attn_shared attn_static EXPORT attnTargets
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(EXPORT attnTargets NAMESPACE attn:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/attn)
configure_package_config_file(cmake/attnConfig.cmake.in ${PROJECT_BINARY_DIR}/attnConfig.cmake
                              INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/attn
                              PATH_VARS CMAKE_INSTALL_DATADIR)
# 0.x: a minor release may break the API, so find_package(attn 0.1) accepts 0.1.y only
if(PROJECT_VERSION_MAJOR EQUAL 0)
  set(ATTN_VERSION_COMPATIBILITY SameMinorVersion)
else()
  set(ATTN_VERSION_COMPATIBILITY SameMajorVersion)
endif()
write_basic_package_version_file(${PROJECT_BINARY_DIR}/attnConfigVersion.cmake COMPATIBILITY ${ATTN_VERSION_COMPATIBILITY})
install(FILES ${PROJECT_BINARY_DIR}/attnConfig.cmake ${PROJECT_BINARY_DIR}/attnConfigVersion.cmake
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/attn)

# pkg-config: the linker flags of OpenBLAS as found here
string(JOIN " " ATTN_PC_BLAS ${XSMM_LIBRARY} ${OPENBLAS_LINK_LIBRARIES} ${DNNL_LIBRARY} -ldl)
file(RELATIVE_PATH ATTN_PC_PREFIX_REL "${CMAKE_INSTALL_FULL_LIBDIR}/pkgconfig" "${CMAKE_INSTALL_PREFIX}")
configure_file(cmake/attn.pc.in ${PROJECT_BINARY_DIR}/attn.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/attn.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)

# The shipped translation model: found by `attn translate` at <prefix>/share/attn/models/numbers-en-zh.
install(DIRECTORY models/ DESTINATION ${CMAKE_INSTALL_DATADIR}/attn/models)
