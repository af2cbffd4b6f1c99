# Installs headers, libattn.so + libattn.a, the attn tool, a CMake package (find_package(attn) ->
# attn::attn, attn::attn_static) and a pkg-config file (attn.pc).
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

# The installed libattn.so and attn find OpenBLAS's OpenMP build outside the default library path.
set_target_properties(attn_shared attn PROPERTIES INSTALL_RPATH_USE_LINK_PATH ON)

# attn/dist (MPI) stays in the build tree: attn_dist is not installed
install(DIRECTORY include/attn DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} FILES_MATCHING PATTERN "*.h" PATTERN dist EXCLUDE)
install(FILES ${PROJECT_BINARY_DIR}/include/attn/version.h DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/attn)
install(TARGETS attn_shared attn_static EXPORT attnTargets
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(TARGETS attn RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(EXPORT attnTargets NAMESPACE attn:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/attn)
configure_package_config_file(cmake/attnConfig.cmake.in ${PROJECT_BINARY_DIR}/attnConfig.cmake
                              INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/attn
                              PATH_VARS CMAKE_INSTALL_DATADIR)
write_basic_package_version_file(${PROJECT_BINARY_DIR}/attnConfigVersion.cmake COMPATIBILITY SameMajorVersion)
install(FILES ${PROJECT_BINARY_DIR}/attnConfig.cmake ${PROJECT_BINARY_DIR}/attnConfigVersion.cmake
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/attn)

# pkg-config: the linker flags of OpenBLAS as found here
string(JOIN " " ATTN_PC_BLAS ${XSMM_LIBRARY} ${OPENBLAS_LINK_LIBRARIES} ${DNNL_LIBRARY} -ldl)
file(RELATIVE_PATH ATTN_PC_PREFIX_REL "${CMAKE_INSTALL_FULL_LIBDIR}/pkgconfig" "${CMAKE_INSTALL_PREFIX}")
configure_file(cmake/attn.pc.in ${PROJECT_BINARY_DIR}/attn.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/attn.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)

# The shipped translation model: found by `attn translate` at <prefix>/share/attn/models/numbers-en-zh.
install(DIRECTORY models/ DESTINATION ${CMAKE_INSTALL_DATADIR}/attn/models)
